"""The workflow's steps. Each reloads the row, checks the step is still due, and is safe twice.

A message only says "look at invitation N now"; what to do is read from the row:
``queued`` → send the invitation; ``sent``/``reminded`` and due → a reminder, or expiry.

Steps run in batches (``advance_many``; one invitation is a batch of one) in three phases:
one write transaction plans every email (rows locked, outbox rows claimed ``sending``, tokens
issued), SMTP runs outside any transaction, and one write transaction records every result.
A batch costs a fixed number of queries, whatever its size, instead of a dozen per email.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import peewee

from engine.core import tokens
from engine.core.db import select_by_ids, write
from engine.core.errors import PermanentDeliveryError, TransientDeliveryError
from engine.core.logs import log_context
from engine.core.models import Invitation, OutboxEmail, Practice
from engine.core.settings import Settings
from engine.mail import Transport, render_email
from workflows import delivery, schedule
from workflows.invitation import TERMINAL_STATES, Event, Move, State, transition, transition_many

logger = logging.getLogger("invites.steps")

WORKER = "worker"

@dataclass(frozen=True)
class _Step:
    """A due email step, decided from the locked row."""

    invitation: Invitation
    practice: Practice
    event: Event
    name: str  # "invitation" or "reminder-<n>": with the id, the outbox dedupe key
    expires_at: datetime
    reminder_number: int


@dataclass(frozen=True)
class _Planned:
    """What phase one decided: the email to send, with everything phase three needs."""

    invitation: Invitation
    practice: Practice
    client_name: str
    outbox: OutboxEmail
    event: Event
    raw_token: str
    expires_at: datetime
    reminder_number: int


@dataclass
class Outcomes:
    """What ``advance_many`` did: each invitation's outcome, or the error that stopped its step.

    ``deferred`` invitations were planned but not sent because the batch ran long; their
    outbox rows are free again and they only need another nudge.
    """

    done: dict[int, str] = field(default_factory=dict)
    errors: dict[int, Exception] = field(default_factory=dict)
    deferred: list[int] = field(default_factory=list)


def advance(invitation_id: int, *, now: datetime, transport: Transport, settings: Settings) -> str:
    """Do whatever step of invitation ``invitation_id`` is due at ``now``; returns what happened.

    Raises what stopped the step (``TransientDeliveryError`` and the like), for the actor's
    retry policy.
    """
    outcomes = advance_many([invitation_id], now=now, transport=transport, settings=settings)
    if invitation_id in outcomes.errors:
        raise outcomes.errors[invitation_id]
    if invitation_id in outcomes.deferred:
        return "deferred"
    return outcomes.done[invitation_id]


def advance_many(
    invitation_ids: Sequence[int], *, now: datetime, transport: Transport, settings: Settings
) -> Outcomes:
    """Do the due step of each invitation, sending the emails one after the other on this thread's
    SMTP connection. One invitation's failed send does not stop the others: it is in ``errors``.

    Raises only when a transaction fails (database unavailable): the planning one sends nothing;
    the recording one is tried three times, then the sent emails are in the at-least-once window
    of a step that died after SMTP (docs/guarantees.md).
    """
    ids = list(dict.fromkeys(invitation_ids))  # the same id twice in one message is one step
    outcomes = Outcomes()
    with write():
        plans = _plan_many(ids, now=now, settings=settings, outcomes=outcomes)
    claimed_at = time.monotonic()
    results: list[tuple[_Planned, Exception | None]] = []
    for plan in plans:
        # An outbox row "sending" for longer than the step time limit may be taken over by
        # another worker: the batch stops well before, and its rest goes back to the queue.
        if (time.monotonic() - claimed_at) * 1000 > settings.step_time_limit_ms / 2:
            break
        results.append((plan, _send(plan, now=now, transport=transport, settings=settings)))
    deferred = plans[len(results) :]
    outcomes.deferred = [p.invitation.id for p in deferred]
    for attempt in (1, 2, 3):
        try:
            with write():
                _record(results, deferred, now=now, settings=settings, outcomes=outcomes)
            break
        except peewee.OperationalError:
            if attempt == 3:
                raise
            time.sleep(0.05 * attempt)
    for plan, error in results:
        if error is None and outcomes.done.get(plan.invitation.id, "").endswith("_sent"):
            kind = "invitation" if plan.event is Event.DELIVER else "reminder"
            state = State.SENT if plan.event is Event.DELIVER else State.REMINDED
            logger.info(
                "%s sent",
                kind,
                extra={"action": f"{kind}_sent", "invitation_id": plan.invitation.id, "state": state,
                       "message_id": plan.outbox.message_id},
            )
    return outcomes


def _load_for_update(invitation_ids: Iterable[int], *, client_names: bool = False) -> dict[int, Invitation]:
    """The rows, locked until the transaction ends (PostgreSQL; SQLite's BEGIN IMMEDIATE locks all).

    With ``client_names`` each row also carries its client's name as ``client_name``, read in
    the same query (a subquery: the client row itself is not locked).
    """
    extra = {"client_name": _CLIENT_NAME} if client_names else None
    return {row.id: row for row in select_by_ids(Invitation, invitation_ids, for_update=True, extra=extra)}


_CLIENT_NAME = '(SELECT "name" FROM "client" WHERE "client"."id" = "invitation"."client_id")'


def _lock_timers(invitation_ids: Iterable[int]) -> dict[int, tuple[int, datetime | None, datetime | None]]:
    """Each row's version, ``sent_at`` and ``expires_at`` now (a paused portal shifts the
    timers without a new version), the rows locked as ``_load_for_update`` locks them."""
    fields = (Invitation.id, Invitation.version, Invitation.sent_at, Invitation.expires_at)
    rows = select_by_ids(Invitation, invitation_ids, fields=fields, for_update=True)
    return {row.id: (row.version, row.sent_at, row.expires_at) for row in rows}


def _plan_many(ids: list[int], *, now: datetime, settings: Settings, outcomes: Outcomes) -> list[_Planned]:
    invitations = _load_for_update(ids, client_names=True)
    wanted = {inv.practice_id for inv in invitations.values()}
    practices = {p.id: p for p in select_by_ids(Practice, wanted)}
    due: list[_Step] = []
    for invitation_id in ids:
        inv = invitations.get(invitation_id)
        decided = _decide(inv, practices[inv.practice_id], now=now) if inv is not None else "missing"
        if isinstance(decided, str):
            outcomes.done[invitation_id] = decided
        else:
            due.append(decided)
    if not due:
        return []
    claims = delivery.claim_outboxes(
        [
            delivery.Claim(
                dedupe_key=f"inv-{step.invitation.id}-{step.name}",
                kind="invitation" if step.event is Event.DELIVER else "reminder",
                practice_id=step.practice.id,
                client_id=step.invitation.client_id,
                invitation_id=step.invitation.id,
                to_email=step.invitation.email,
            )
            for step in due
        ],
        now=now,
        settings=settings,
    )
    ready: list[tuple[_Step, OutboxEmail]] = []
    for step in due:
        inv = step.invitation
        outbox = claims[f"inv-{inv.id}-{step.name}"]
        if outbox is None:
            outcomes.done[inv.id] = "already_handled"
        elif outbox.attempts > settings.max_delivery_attempts:
            fail(inv.id, error=outbox.last_error or "delivery attempts exhausted", now=now)
            outcomes.done[inv.id] = "failed"
        else:
            ready.append((step, outbox))
    raws = tokens.issue_many(
        [(s.practice.id, s.invitation.client_id, s.invitation.id, "invite", s.expires_at) for s, _ in ready], now=now
    )
    return [
        _Planned(s.invitation, s.practice, s.invitation.client_name, outbox, s.event,  # type: ignore[attr-defined]
                 raw, s.expires_at, s.reminder_number)
        for (s, outbox), raw in zip(ready, raws, strict=True)
    ]


def _decide(inv: Invitation, practice: Practice, *, now: datetime) -> _Step | str:
    """The email step due for ``inv`` now, or what happened instead (expiry and rescheduling are
    done here, inside the planning transaction)."""
    if inv.state in TERMINAL_STATES:
        return "finished"
    if inv.next_action_at is None or inv.next_action_at > now:
        return "not_due"
    if not practice.portal_enabled:
        return "paused"  # the sweep leaves it alone; switching back on shifts the schedule
    if inv.state == State.QUEUED:
        return _Step(inv, practice, Event.DELIVER, "invitation", now + timedelta(seconds=practice.lifetime_s), 0)
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
    return _Step(inv, practice, Event.REMIND, f"reminder-{number}", inv.expires_at, number)


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
        "client_name": plan.client_name,
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


def _send(plan: _Planned, *, now: datetime, transport: Transport, settings: Settings) -> Exception | None:
    """Render, build and hand one email to SMTP; returns what went wrong, if anything."""
    kind = "invitation" if plan.event is Event.DELIVER else "reminder"
    try:
        with log_context(invitation_id=plan.invitation.id):  # the transport's lines name the invitation
            email = render_email(kind, email_context(plan, settings))
            delivery.send(
                plan.outbox,
                email,
                practice=plan.practice,
                to_name=plan.client_name,
                transport=transport,
                settings=settings,
                now=now,
            )
    except Exception as exc:  # noqa: BLE001 - recorded per invitation; the others go on
        return exc
    return None


def _record(
    results: list[tuple[_Planned, Exception | None]],
    deferred: list[_Planned],
    *,
    now: datetime,
    settings: Settings,
    outcomes: Outcomes,
) -> None:
    """Phase three, inside one write transaction: mark every outbox row and move every invitation."""
    sent = [plan for plan, error in results if error is None]
    if deferred:
        delivery.release([p.outbox.id for p in deferred])
    if sent:
        delivery.mark_many([p.outbox.id for p in sent], "sent", now=now)
    current = _lock_timers(p.invitation.id for p in sent) if sent else {}
    moves: dict[Event, list[Move]] = {}
    for plan in sent:
        row = plan.invitation
        version, row.sent_at, row.expires_at = current.get(row.id, (None, None, None))
        if version != row.version:
            outcomes.done[row.id] = "sent_but_superseded"  # signed in, revoked or disabled meanwhile
            continue
        if plan.event is Event.DELIVER:
            row.sent_at, row.expires_at = now, plan.expires_at
        row.reminders_sent = plan.reminder_number
        changes: dict[str, Any] = {
            "sent_at": row.sent_at,
            "expires_at": row.expires_at,
            "reminders_sent": row.reminders_sent,
            "next_action_at": schedule.next_action_at(plan.practice, row),
            "lease_until": None,
            "last_error": None,
        }
        detail = {"message_id": plan.outbox.message_id, "to": plan.outbox.to_email}
        moves.setdefault(plan.event, []).append(Move(row, changes, detail))
        outcomes.done[row.id] = ("invitation" if plan.event is Event.DELIVER else "reminder") + "_sent"
    for event, batch in moves.items():
        transition_many(batch, event, actor=WORKER, now=now)
    for plan, error in results:
        if error is not None:
            _record_failure(plan, error, now=now, settings=settings, outcomes=outcomes)


def _record_failure(plan: _Planned, error: Exception, *, now: datetime, settings: Settings,
                    outcomes: Outcomes) -> None:
    inv = plan.invitation
    if isinstance(error, PermanentDeliveryError):
        delivery.mark(plan.outbox.id, "failed", now=now, error=str(error))
        fail(inv.id, error=str(error), now=now)
        outcomes.done[inv.id] = "failed"
        return
    # Anything else is the actor's to retry: the row is free for the retry to claim again.
    delivery.mark(plan.outbox.id, "pending", now=now, error=str(error))
    if isinstance(error, TransientDeliveryError):
        # Keep the sweep off this invitation while Dramatiq's retry is pending.
        hold = timedelta(milliseconds=settings.retry_max_backoff_ms, seconds=settings.step_lease_s)
        Invitation.update(lease_until=now + hold, last_error=str(error)).where(Invitation.id == inv.id).execute()
    outcomes.errors[inv.id] = error


def fail(invitation_id: int, *, error: str, now: datetime) -> bool:
    """Mark a live invitation failed with its last error (retries exhausted or SMTP 5xx)."""
    with write():
        inv = _load_for_update([invitation_id]).get(invitation_id)
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
