"""Sending one outbox email: written before the SMTP conversation, marked sent after it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import formataddr, parseaddr
from functools import lru_cache

from peewee import Field

from engine.core.db import insert_rows
from engine.core.models import OutboxEmail, Practice
from engine.core.settings import Settings
from engine.mail import RenderedEmail, Transport, build_message


@lru_cache(maxsize=8)
def _sender(mail_from: str) -> str:
    # parseaddr costs more than rendering half an email: parse the setting once.
    return parseaddr(mail_from)[1]


def message_id_for(dedupe_key: str, settings: Settings) -> str:
    """A stable Message-ID per (invitation, step): a repeated send carries the same one."""
    domain = _sender(settings.mail_from).rpartition("@")[2] or "portal.invalid"
    return f"<{dedupe_key}@{domain}>"


@dataclass(frozen=True)
class Claim:
    """An email a step owes: its dedupe key (invitation and step) and where it goes."""

    dedupe_key: str
    kind: str
    practice_id: int
    client_id: int
    invitation_id: int | None
    to_email: str


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
    claim = Claim(dedupe_key, kind, practice_id, client_id, invitation_id, to_email)
    return claim_outboxes([claim], now=now, settings=settings)[dedupe_key]


def claim_outboxes(claims: Sequence[Claim], *, now: datetime, settings: Settings) -> dict[str, OutboxEmail | None]:
    """``claim_outbox`` for many steps at once: one statement adds the new rows, and only the
    keys that had a row already are read back.

    Returns each claim's row by dedupe key (None where nothing is to be sent). New rows are
    written ``sending`` at once: nobody else can have seen them yet.
    """
    fields: list[Field] = [OutboxEmail.dedupe_key, OutboxEmail.kind, OutboxEmail.practice, OutboxEmail.client,
                           OutboxEmail.invitation, OutboxEmail.to_email, OutboxEmail.message_id, OutboxEmail.status,
                           OutboxEmail.attempts, OutboxEmail.sending_since, OutboxEmail.created_at]
    rows = [
        (c.dedupe_key, c.kind, c.practice_id, c.client_id, c.invitation_id, c.to_email,
         message_id_for(c.dedupe_key, settings), "sending", 1, now, now)
        for c in claims
    ]
    # A key that has a row already (a redelivered step) is skipped here and read below.
    inserted = insert_rows(fields, rows, returning=[OutboxEmail.dedupe_key, OutboxEmail.id], ignore_conflicts=True)
    ids: dict[str, int] = dict(inserted)
    names = [f.name for f in fields]
    claimed: dict[str, OutboxEmail | None] = {}
    for values in rows:
        if values[0] in ids:
            claimed[values[0]] = OutboxEmail(id=ids[values[0]], **dict(zip(names, values, strict=True)))
    taken = [c.dedupe_key for c in claims if c.dedupe_key not in ids]
    found = {}
    if taken:
        found = {row.dedupe_key: row for row in OutboxEmail.select().where(OutboxEmail.dedupe_key.in_(taken))}
    stale_before = now - timedelta(milliseconds=settings.step_time_limit_ms)
    for claim in claims:
        if claim.dedupe_key in claimed:
            continue
        row = found.get(claim.dedupe_key)
        if row is None or row.status in ("sent", "failed", "superseded") or (
            row.status == "sending" and row.sending_since and row.sending_since > stale_before
        ):
            claimed[claim.dedupe_key] = None
            continue
        row.status = "sending"
        row.attempts += 1
        row.sending_since = now
        row.to_email = claim.to_email
        row.save()
        claimed[claim.dedupe_key] = row
    return claimed


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
    address = _sender(settings.mail_from)
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
    mark_many([row_id], status, now=now, error=error)


def release(row_ids: Sequence[int]) -> None:
    """Give back rows claimed but never tried (the batch ran out of time): not an attempt."""
    OutboxEmail.update(status="pending", attempts=OutboxEmail.attempts - 1, sending_since=None).where(
        OutboxEmail.id.in_(list(row_ids)) & (OutboxEmail.status == "sending")
    ).execute()


def mark_many(row_ids: Sequence[int], status: str, *, now: datetime, error: str | None = None) -> None:
    """``mark`` for many rows that ended alike, in one statement."""
    changes: dict[str, object] = {"status": status, "last_error": error}
    if status == "sent":
        changes["sent_at"] = now
    OutboxEmail.update(**changes).where(OutboxEmail.id.in_(list(row_ids))).execute()
