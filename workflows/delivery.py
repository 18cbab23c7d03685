"""Sending one outbox email: written before the SMTP conversation, marked sent after it."""

from __future__ import annotations

from datetime import datetime, timedelta
from email.utils import formataddr, parseaddr

from engine.mail import RenderedEmail, Transport, build_message
from engine.models import OutboxEmail, Practice
from engine.settings import Settings


def message_id_for(dedupe_key: str, settings: Settings) -> str:
    """A stable Message-ID per (invitation, step): a repeated send carries the same one."""
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "portal.invalid"
    return f"<{dedupe_key}@{domain}>"


def claim_outbox(
    *,
    dedupe_key: str,
    kind: str,
    practice_id: int,
    client_id: int,
    invitation_id: int | None,
    to_email: str,
    now: datetime,
    settings: Settings,
) -> OutboxEmail | None:
    """The outbox row of a step, marked ``sending`` by us; None if nothing is to be sent.

    Must run inside the step's write transaction. A row already ``sent``, ``failed`` or
    ``superseded`` is final; a row another worker marked ``sending`` recently is theirs.
    A ``sending`` row older than the step time limit belonged to a worker that died: we take it
    over, and the email may go twice, under the same Message-ID (docs/guarantees.md).
    """
    row = OutboxEmail.get_or_none(OutboxEmail.dedupe_key == dedupe_key)
    if row is None:
        row = OutboxEmail.create(
            dedupe_key=dedupe_key,
            kind=kind,
            practice=practice_id,
            client=client_id,
            invitation=invitation_id,
            to_email=to_email,
            message_id=message_id_for(dedupe_key, settings),
            created_at=now,
        )
    if row.status in ("sent", "failed", "superseded"):
        return None
    stale_before = now - timedelta(milliseconds=settings.step_time_limit_ms)
    if row.status == "sending" and row.sending_since and row.sending_since > stale_before:
        return None
    row.status = "sending"
    row.attempts += 1
    row.sending_since = now
    row.to_email = to_email
    row.save()
    return row


def send(
    row: OutboxEmail,
    email: RenderedEmail,
    *,
    practice: Practice,
    to_name: str,
    transport: Transport,
    settings: Settings,
    now: datetime,
) -> None:
    """Build and hand the message to the transport (raises the transport's delivery errors)."""
    address = parseaddr(settings.mail_from)[1]
    # The practice's name shows as the sender; the address stays ours (SPF/DKIM align).
    from_addr = formataddr((practice.name, address))
    message = build_message(
        from_addr=from_addr,
        to_addr=row.to_email,
        to_name=to_name,
        subject=email.subject,
        text=email.text,
        html=email.html,
        message_id=row.message_id,
        date=now,
    )
    transport.send(from_addr=address, to_addr=row.to_email, message=message, message_id=row.message_id)


def mark(row_id: int, status: str, *, now: datetime, error: str | None = None) -> None:
    """Record how an attempt ended (inside the caller's transaction)."""
    changes: dict[str, object] = {"status": status, "last_error": error}
    if status == "sent":
        changes["sent_at"] = now
    OutboxEmail.update(**changes).where(OutboxEmail.id == row_id).execute()
