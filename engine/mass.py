"""Mass invitation (admin): invite every client who can be invited and is not yet, in batches.

Built for practices with a hundred thousand clients: each batch is one query to load its
candidates (clients with their access row and live invitation joined in), one transaction of
multi-row inserts (access rows, invitations, their audit rows), then the nudges after the
commit. Clients are walked in id order with a keyset, so a batch costs the same at the end as
at the start. Running it twice invites nobody twice: the second run finds
everyone it invited ``already_active``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import peewee
from peewee import JOIN, Field

from engine import audit, clock, lookup, roles
from engine.db import insert_rows, write
from engine.errors import InvalidInput, PortalOff
from engine.invitations import nudge
from engine.models import AuditEvent, Client, Invitation, PortalAccess, Practice
from engine.settings import get_settings
from workflows.invitation import LIVE_STATES, State

logger = logging.getLogger("invites.mass")

_LIVE = [s.value for s in LIVE_STATES]
#: Why a client was not invited, in the order they are checked.
SKIP_REASONS = ("disabled", "already_active", "no_email", "no_consent")
_INVITATION_FIELDS: list[Field] = [
    Invitation.practice, Invitation.client, Invitation.email, Invitation.state, Invitation.version,
    Invitation.next_action_at, Invitation.lease_until, Invitation.reminders_sent, Invitation.kind,
    Invitation.created_by, Invitation.created_at,
]
_AUDIT_FIELDS: list[Field] = [
    AuditEvent.practice, AuditEvent.client, AuditEvent.invitation, AuditEvent.at, AuditEvent.actor,
    AuditEvent.action, AuditEvent.detail,
]

#: Called after each batch with (clients looked at so far, clients in the practice).
Progress = Callable[[int, int], None]


@dataclass
class MassInviteReport:
    """What a mass invitation did: who was invited, and who was skipped and why."""

    practice_id: int
    clients: int = 0
    invited: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    batches: int = 0
    enqueued: int = 0
    duration_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Batch:
    examined: int
    last_id: int
    invitation_ids: list[int]
    skipped: dict[str, int]


def mass_invite(
    practice_id: int,
    *,
    by: str,
    batch_size: int = 1000,
    progress: Progress | None = None,
    now: datetime | None = None,
) -> MassInviteReport:
    """Invite every client of the practice with an email, consent and no access (admin only).

    Skipped, and counted by reason: ``disabled`` (staff turned access off), ``already_active``
    (a live invitation, or signed in), ``no_email``, ``no_consent``. Each batch commits on its
    own, so an interrupted run keeps what it did and running it again finishes the rest.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "mass_invite")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
        raise InvalidInput("batch_size must be between 1 and 10000", field="batch_size")
    started = time.perf_counter()
    practice = lookup.practice(practice_id)
    if not practice.portal_enabled:
        raise PortalOff("the client portal is switched off for this practice")
    total = Client.select().where(Client.practice == practice.id).count()
    report = MassInviteReport(practice.id)
    last_id = 0
    while True:
        batch = _run_batch(practice.id, after=last_id, limit=batch_size, actor=actor, now=now)
        if batch.examined == 0:
            break
        last_id = batch.last_id
        report.batches += 1
        report.clients += batch.examined
        report.invited += len(batch.invitation_ids)
        for reason, count in batch.skipped.items():
            report.skipped[reason] += count
        # After the commit; a nudge that does not reach the broker is re-sent by the sweep.
        report.enqueued += nudge(batch.invitation_ids) if batch.invitation_ids else 0
        if progress is not None:
            progress(report.clients, max(total, report.clients))
        if batch.examined < batch_size:
            break
    report.duration_ms = round((time.perf_counter() - started) * 1000, 1)
    with write():
        audit.record(practice_id=practice.id, actor=actor, action="mass_invite", now=now,
                     detail={"invited": report.invited, "skipped": report.skipped, "clients": report.clients})
    logger.info("mass invitation done", extra={"action": "mass_invite", "practice_id": practice.id,
                                                "invited": report.invited, "clients": report.clients})
    return report


def _run_batch(practice_id: int, *, after: int, limit: int, actor: str, now: datetime) -> _Batch:
    for attempt in (1, 2):
        try:
            with write():
                return _batch(practice_id, after=after, limit=limit, actor=actor, now=now)
        except peewee.IntegrityError:
            # Someone invited one of these clients meanwhile: the second pass sees it as active.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _candidates(practice_id: int, *, after: int, limit: int) -> list[dict[str, Any]]:
    """One query: the next clients by id, with their access row and live invitation."""
    live = Invitation.alias()
    query: Any = (
        Client.select(
            Client.id,
            Client.primary_email,
            Client.email_consent,
            PortalAccess.client.alias("access_client"),
            PortalAccess.portal_email,
            PortalAccess.disabled_at,
            PortalAccess.first_signed_in_at,
            live.id.alias("live_id"),
        )
        .join(PortalAccess, JOIN.LEFT_OUTER, on=(PortalAccess.client == Client.id))
        .switch(Client)
        # At most one live invitation per client (a unique index), so the join adds no rows.
        .join(live, JOIN.LEFT_OUTER, on=((live.client == Client.id) & live.state.in_(_LIVE)))
        .where((Client.practice == practice_id) & (Client.id > after))
        .order_by(Client.id)
        .limit(limit)
        .dicts()
    )
    return list(query)


def _reason(row: dict[str, Any]) -> str | None:
    if row["disabled_at"] is not None:
        return "disabled"
    if row["live_id"] is not None or row["first_signed_in_at"] is not None:
        return "already_active"
    if not (row["portal_email"] or row["primary_email"]):
        return "no_email"
    if not row["email_consent"]:
        return "no_consent"
    return None


def _batch(practice_id: int, *, after: int, limit: int, actor: str, now: datetime) -> _Batch:
    if not Practice.get_by_id(practice_id).portal_enabled:
        raise PortalOff("the client portal was switched off during the mass invitation")
    rows = _candidates(practice_id, after=after, limit=limit)
    if not rows:
        return _Batch(0, after, [], {})
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    chosen: list[dict[str, Any]] = []
    for row in rows:
        reason = _reason(row)
        if reason is None:
            chosen.append(row)
        else:
            skipped[reason] += 1
    lease_until = now + timedelta(seconds=get_settings().step_lease_s)
    new_access = [(r["id"], practice_id, now) for r in chosen if r["access_client"] is None]
    if new_access:
        insert_rows([PortalAccess.client, PortalAccess.practice, PortalAccess.updated_at], new_access,
                    ignore_conflicts=True)
    invited: list[tuple[int, int, str]] = []  # (invitation id, client id, address)
    if chosen:
        # queued, version 1, due now; the nudge below owns the step until the lease runs out.
        created = insert_rows(
            _INVITATION_FIELDS,
            [(practice_id, r["id"], r["portal_email"] or r["primary_email"], State.QUEUED.value, 1, now,
              lease_until, 0, "invite", actor, now) for r in chosen],
            returning=[Invitation.id, Invitation.client, Invitation.email],
        )
        invited = [(int(i), int(c), str(address)) for i, c, address in created]
        insert_rows(
            _AUDIT_FIELDS,
            [(practice_id, client_id, invitation_id, now, actor, "invited",
              json.dumps({"kind": "invite", "mass": True, "to": address}, sort_keys=True))
             for invitation_id, client_id, address in invited],
        )
    return _Batch(len(rows), rows[-1]["id"], [i for i, _, _ in invited], skipped)
