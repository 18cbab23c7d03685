"""The workflow's steps. Each reloads the row, checks the step is still due, and is safe twice.

A message only says "look at invitation N now"; what to do is read from the row:
``queued`` → send the invitation; ``sent``/``reminded`` and due → a reminder, or expiry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from engine import tokens
from engine.db import is_postgres, write
from engine.errors import PermanentDeliveryError, TransientDeliveryError
from engine.mail import Transport, render_email
from engine.models import Client, Invitation, OutboxEmail, Practice
from engine.settings import Settings
from workflows import delivery, schedule
from workflows.invitation import TERMINAL_STATES, Event, State, transition

logger = logging.getLogger("invites.steps")

WORKER = "worker"


@dataclass(frozen=True)
class _Planned:
    """What phase one decided: the email to send, with everything phase three needs."""

    invitation: Invitation
    practice: Practice
    client: Client
    outbox: OutboxEmail
    event: Event
    raw_token: str
    expires_at: datetime
    reminder_number: int


def _load_for_update(invitation_id: int) -> Invitation | None:
    query = Invitation.select().where(Invitation.id == invitation_id)
    if is_postgres():
        query = query.for_update()
    return query.first()


def advance(invitation_id: int, *, now: datetime, transport: Transport, settings: Settings) -> str:
    """Do whatever step of invitation ``invitation_id`` is due at ``now``; returns what happened."""
    with write():
        outcome = _plan(invitation_id, now=now, settings=settings)
    if isinstance(outcome, str):
        return outcome
    return _deliver(outcome, now=now, transport=transport, settings=settings)


def _plan(invitation_id: int, *, now: datetime, settings: Settings) -> _Planned | str:
    inv = _load_for_update(invitation_id)
    if inv is None:
        return "missing"
    if inv.state in TERMINAL_STATES:
        return "finished"
    if inv.next_action_at is None or inv.next_action_at > now:
        return "not_due"
    practice: Practice = Practice.get_by_id(inv.practice_id)
    if not practice.portal_enabled:
        return "paused"  # the sweep leaves it alone; switching back on shifts the schedule
    client: Client = Client.get_by_id(inv.client_id)

    if inv.state == State.QUEUED:
        event, number, step = Event.DELIVER, 0, "invitation"
        expires_at = now + timedelta(seconds=practice.lifetime_s)
    else:
        assert inv.expires_at is not None
        if now >= inv.expires_at:
            # Its links expire with it (same expires_at), and say so when opened.
            transition(inv, Event.EXPIRE, actor=WORKER, now=now)
            logger.info("invitation expired", extra={"action": "invitation_expired", "invitation_id": inv.id})
            return "expired"
        number = inv.reminders_sent + 1
        due = schedule.reminder_due_at(practice, inv, number)
        if due is None or due > now:
            return _reschedule(inv, schedule.next_action_at(practice, inv), "rescheduled")
        if not schedule.in_window(practice, now):
            later = min(schedule.next_window_start(practice, now), inv.expires_at)
            return _reschedule(inv, later, "outside_window")
        event, step, expires_at = Event.REMIND, f"reminder-{number}", inv.expires_at

    outbox = delivery.claim_outbox(
        dedupe_key=f"inv-{inv.id}-{step}",
        kind="invitation" if event is Event.DELIVER else "reminder",
        practice_id=practice.id,
        client_id=client.id,
        invitation_id=inv.id,
        to_email=inv.email,
        now=now,
        settings=settings,
    )
    if outbox is None:
        return "already_handled"
    if outbox.attempts > settings.max_delivery_attempts:
        error = outbox.last_error or "delivery attempts exhausted"
        fail(inv.id, error=error, now=now)
        return "failed"
    raw = tokens.issue(
        practice_id=practice.id,
        client_id=client.id,
        invitation_id=inv.id,
        purpose="invite",
        expires_at=expires_at,
        now=now,
    )
    return _Planned(inv, practice, client, outbox, event, raw, expires_at, number)


def _reschedule(inv: Invitation, when: datetime, outcome: str) -> str:
    Invitation.update(next_action_at=when, lease_until=None).where(
        (Invitation.id == inv.id) & (Invitation.version == inv.version)
    ).execute()
    return outcome


def email_context(plan: _Planned, settings: Settings) -> dict[str, object]:
    practice, inv = plan.practice, plan.invitation
    local_expiry = plan.expires_at.astimezone(ZoneInfo(practice.time_zone))
    return {
        "practice_name": practice.name,
        "logo_url": practice.logo_url or "",
        "client_name": plan.client.name,
        "sign_in_url": practice.portal_url,
        "set_password_url": set_password_url(practice, plan.raw_token, settings),
        "expires_on": f"{local_expiry:%A} {local_expiry.day} {local_expiry:%B %Y}",
        "custom_message": inv.custom_message or "",
        "documents_waiting": inv.kind == "share",
        "portal_url": practice.portal_url,
        "reminder_number": plan.reminder_number,
    }


def set_password_url(practice: Practice, raw_token: str, settings: Settings) -> str:
    return f"{settings.portal_base_url}/p/{practice.id}/set-password?token={raw_token}"


def _deliver(plan: _Planned, *, now: datetime, transport: Transport, settings: Settings) -> str:
    inv = plan.invitation
    kind = "invitation" if plan.event is Event.DELIVER else "reminder"
    email = render_email(kind, email_context(plan, settings))
    try:
        delivery.send(
            plan.outbox,
            email,
            practice=plan.practice,
            to_name=plan.client.name,
            transport=transport,
            settings=settings,
            now=now,
        )
    except TransientDeliveryError as exc:
        with write():
            delivery.mark(plan.outbox.id, "pending", now=now, error=str(exc))
            # Keep the sweep off this invitation while Dramatiq's retry is pending.
            hold = timedelta(milliseconds=settings.retry_max_backoff_ms, seconds=settings.step_lease_s)
            Invitation.update(lease_until=now + hold, last_error=str(exc)).where(
                Invitation.id == inv.id
            ).execute()
        raise
    except PermanentDeliveryError as exc:
        with write():
            delivery.mark(plan.outbox.id, "failed", now=now, error=str(exc))
            fail(inv.id, error=str(exc), now=now)
        return "failed"

    with write():
        delivery.mark(plan.outbox.id, "sent", now=now)
        current = _load_for_update(inv.id)
        if current is None or current.version != inv.version:
            return "sent_but_superseded"  # signed in, revoked or disabled meanwhile
        if plan.event is Event.DELIVER:
            current.sent_at, current.expires_at = now, plan.expires_at
        current.reminders_sent = plan.reminder_number
        after = transition(
            current,
            plan.event,
            actor=WORKER,
            now=now,
            detail={"message_id": plan.outbox.message_id, "to": plan.outbox.to_email},
            sent_at=current.sent_at,
            expires_at=current.expires_at,
            reminders_sent=current.reminders_sent,
            next_action_at=schedule.next_action_at(plan.practice, current),
            lease_until=None,
            last_error=None,
        )
    logger.info(
        "%s sent",
        kind,
        extra={"action": f"{kind}_sent", "invitation_id": inv.id, "state": after.state},
    )
    return kind + "_sent"


def fail(invitation_id: int, *, error: str, now: datetime) -> bool:
    """Mark a live invitation failed with its last error (retries exhausted or SMTP 5xx)."""
    with write():
        inv = _load_for_update(invitation_id)
        if inv is None or inv.state in TERMINAL_STATES:
            return False
        tokens.revoke(client_id=inv.client_id, invitation_id=inv.id, reason="failed", now=now)
        transition(inv, Event.FAIL, actor=WORKER, now=now, detail={"error": error}, last_error=error)
        OutboxEmail.update(status="failed", last_error=error).where(
            (OutboxEmail.invitation == inv.id) & (OutboxEmail.status.in_(("pending", "sending")))
        ).execute()
    logger.warning("invitation failed", extra={"action": "invitation_failed", "invitation_id": invitation_id})
    return True


def last_error(invitation_id: int) -> str | None:
    row = (
        OutboxEmail.select(OutboxEmail.last_error)
        .where((OutboxEmail.invitation == invitation_id) & OutboxEmail.last_error.is_null(False))
        .order_by(OutboxEmail.id.desc())
        .first()
    )
    return row.last_error if row else None

