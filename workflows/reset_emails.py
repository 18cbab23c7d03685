"""Delivering a password-reset email: the actor ``send_outbox_email`` calls ``deliver``.

Same three phases as an invitation step: claim the outbox row and issue the token in one write
transaction, talk SMTP outside it, then mark the row. Safe to run twice: a row already sent,
failed or superseded is final, and one another worker is sending is theirs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from engine.core import audit, tokens
from engine.core.db import select_by_ids, write
from engine.core.errors import PermanentDeliveryError, TransientDeliveryError
from engine.core.models import Client, OutboxEmail, PortalAccess, Practice
from engine.core.settings import Settings
from engine.mail import Transport, render_email
from workflows import delivery
from workflows.steps import WORKER, set_password_url

logger = logging.getLogger("invites.resets")

_FINAL = ("sent", "failed", "superseded")


@dataclass(frozen=True)
class _Planned:
    row: OutboxEmail
    practice: Practice
    client: Client
    raw_token: str
    expires_at: datetime


def deliver(outbox_id: int, *, now: datetime, transport: Transport, settings: Settings) -> str:
    """Send reset email ``outbox_id`` if it is still owed; returns what happened.

    Raises ``TransientDeliveryError`` while attempts remain (the actor retries with backoff).
    """
    with write():
        planned = _plan(outbox_id, now=now, settings=settings)
    if isinstance(planned, str):
        return planned
    return _send(planned, now=now, transport=transport, settings=settings)


def _load_for_update(outbox_id: int) -> OutboxEmail | None:
    rows = select_by_ids(OutboxEmail, [outbox_id], for_update=True)
    return rows[0] if rows else None


def _plan(outbox_id: int, *, now: datetime, settings: Settings) -> _Planned | str:
    row = _load_for_update(outbox_id)
    if row is None:
        return "missing"
    if row.kind != "reset":
        return "not_a_reset"
    if row.status in _FINAL:
        return "already_handled"
    practice: Practice = Practice.get_by_id(row.practice_id)
    access = PortalAccess.get_or_none(PortalAccess.client == row.client_id)
    newer = OutboxEmail.select().where(
        (OutboxEmail.client == row.client_id) & (OutboxEmail.kind == "reset") & (OutboxEmail.id > row.id)
    )
    reason = None
    if not practice.portal_enabled:
        reason = "portal_off"  # a link that cannot be used; the client asks again later
    elif access is None or access.disabled_at is not None:
        reason = "access_disabled"
    elif newer.exists():
        reason = "superseded"
    if reason is not None:
        delivery.mark(row.id, "superseded", now=now, error=None if reason == "superseded" else reason)
        return reason
    claimed = delivery.claim_outbox(
        dedupe_key=row.dedupe_key,
        kind="reset",
        practice_id=practice.id,
        client_id=row.client_id,
        invitation_id=None,
        to_email=row.to_email,
        now=now,
        settings=settings,
    )
    if claimed is None:
        return "already_handled"
    if claimed.attempts > settings.max_delivery_attempts:
        delivery.mark(claimed.id, "failed", now=now, error=row.last_error or "delivery attempts exhausted")
        return "failed"
    # One reset link alive at a time: an earlier attempt's link dies with this one's issue.
    tokens.revoke(client_id=row.client_id, purpose="reset", reason="superseded", now=now)
    expires_at = now + timedelta(seconds=settings.reset_token_ttl_s)
    raw = tokens.issue(practice_id=practice.id, client_id=row.client_id, invitation_id=None, purpose="reset",
                       expires_at=expires_at, now=now)
    return _Planned(claimed, practice, Client.get_by_id(row.client_id), raw, expires_at)


def expires_text(practice: Practice, expires_at: datetime, ttl_s: int) -> str:
    """When a link dies, for the email: ``in 60 minutes, at 11:00 on Tuesday 1 December 2026 (… time)``."""
    local = expires_at.astimezone(ZoneInfo(practice.time_zone))
    span = f"{ttl_s // 60} minutes" if ttl_s < 2 * 3600 else f"{ttl_s // 3600} hours"
    return f"in {span}, at {local:%H:%M} on {local:%A} {local.day} {local:%B %Y} ({practice.time_zone} time)"


def _send(plan: _Planned, *, now: datetime, transport: Transport, settings: Settings) -> str:
    row, practice = plan.row, plan.practice
    email = render_email("password_reset", {
        "practice_name": practice.name,
        "logo_url": practice.logo_url or "",
        "client_name": plan.client.name,
        "reset_url": set_password_url(practice, plan.raw_token, settings),
        "expires_at_text": expires_text(practice, plan.expires_at, settings.reset_token_ttl_s),
    })
    try:
        delivery.send(row, email, practice=practice, to_name=plan.client.name, transport=transport,
                      settings=settings, now=now)
    except TransientDeliveryError as exc:
        with write():
            if row.attempts >= settings.max_delivery_attempts:
                _failed(row, str(exc), now=now)
                return "failed"
            delivery.mark(row.id, "pending", now=now, error=str(exc))
        raise
    except PermanentDeliveryError as exc:
        with write():
            _failed(row, str(exc), now=now)
        return "failed"
    with write():
        delivery.mark(row.id, "sent", now=now)
        audit.record(practice_id=practice.id, client_id=row.client_id, actor=WORKER, action="password_reset_sent",
                     now=now, detail={"message_id": row.message_id, "to": row.to_email})
    logger.info("password reset sent", extra={"action": "password_reset_sent", "outbox_id": row.id})
    return "reset_sent"


def _failed(row: OutboxEmail, error: str, *, now: datetime) -> None:
    delivery.mark(row.id, "failed", now=now, error=error)
    tokens.revoke(client_id=row.client_id, purpose="reset", reason="failed", now=now)
    audit.record(practice_id=row.practice_id, client_id=row.client_id, actor=WORKER, action="password_reset_failed",
                 now=now, detail={"error": error})
    logger.warning("password reset failed", extra={"action": "password_reset_failed", "outbox_id": row.id})
