"""Mass invitation (admin): invite every client who can be invited and is not yet, in batches.

Built for practices with a hundred thousand clients: each batch is one query to load its
candidates (clients with their access row and live invitation joined in), one transaction of
multi-row inserts (access rows, invitations, their audit rows), then the nudges after the
commit. Clients are walked in id order with a keyset, so a batch costs the same at the end as
at the start. Running it twice invites nobody twice: the second run finds
everyone it invited ``already_active``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import peewee
from peewee import Case, Field, Select

from engine import audit, clock, lookup, roles
from engine.db import db, insert_rows, is_postgres, write
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


class _Candidate(NamedTuple):
    id: int
    primary_email: str | None
    email_consent: bool | None
    access: str | None  # None: no access row yet; else "disabled", "signed_in" or "open"
    portal_email: str | None
    live_id: int | None


def _candidates(practice_id: int, *, after: int, limit: int) -> list[_Candidate]:
    """One query: the next clients by id, each with its access row's facts and its live invitation.

    The batch of clients is cut first, and each client's access row and live invitation are
    fetched by a subquery on its key: one index probe a client, whatever the planner believes
    of the tables' sizes. (As joins, PostgreSQL planned a hash of the whole invitation table
    once a mass invitation had grown it past its statistics: 110 ms a batch instead of 7.)
    """
    batch: Any = (
        Client.select(Client.id, Client.primary_email, Client.email_consent)
        .where((Client.practice == practice_id) & (Client.id > after))
        .order_by(Client.id)
        .limit(limit)
        .alias("batch")
    )
    access = Case(None, ((PortalAccess.disabled_at.is_null(False), "disabled"),
                         (PortalAccess.first_signed_in_at.is_null(False), "signed_in")), "open")

    def of_access(column: Any) -> Any:
        return PortalAccess.select(column).where(PortalAccess.client == batch.c.id)

    # At most one live invitation per client (a unique index), so this is one value or none.
    live = Invitation.select(Invitation.id).where((Invitation.client == batch.c.id) & Invitation.state.in_(_LIVE))
    columns = [batch.c.id, batch.c.primary_email, batch.c.email_consent, of_access(access),
               of_access(PortalAccess.portal_email), live]
    query = Select([batch], columns).order_by(batch.c.id).bind(db).tuples()
    return [_Candidate(*row) for row in query]


def _reason(client: _Candidate) -> str | None:
    if client.access == "disabled":
        return "disabled"
    if client.live_id is not None or client.access == "signed_in":
        return "already_active"
    if not (client.portal_email or client.primary_email):
        return "no_email"
    if not client.email_consent:
        return "no_consent"
    return None


def _batch(practice_id: int, *, after: int, limit: int, actor: str, now: datetime) -> _Batch:
    if not Practice.get_by_id(practice_id).portal_enabled:
        raise PortalOff("the client portal was switched off during the mass invitation")
    rows = _candidates(practice_id, after=after, limit=limit)
    if not rows:
        return _Batch(0, after, [], {})
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    chosen: list[tuple[int, str, bool]] = []
    for client in rows:
        reason = _reason(client)
        if reason is None:
            chosen.append((client.id, str(client.portal_email or client.primary_email), client.access is not None))
        else:
            skipped[reason] += 1
    write_rows = _write_postgres if is_postgres() else _write_rows
    invitation_ids = write_rows(practice_id, chosen, actor=actor, now=now) if chosen else []
    return _Batch(len(rows), rows[-1].id, invitation_ids, skipped)


def _write_rows(practice_id: int, chosen: list[tuple[int, str, bool]], *, actor: str, now: datetime) -> list[int]:
    """Access rows for those without one, then the invitations, then their audit rows: multi-row inserts."""
    new_access = [(client_id, practice_id, now) for client_id, _, has_access in chosen if not has_access]
    if new_access:
        insert_rows([PortalAccess.client, PortalAccess.practice, PortalAccess.updated_at], new_access,
                    ignore_conflicts=True)
    lease_until = now + timedelta(seconds=get_settings().step_lease_s)
    # queued, version 1, due now; the nudge after the commit owns the step until the lease runs out.
    created = insert_rows(
        _INVITATION_FIELDS,
        [(practice_id, client_id, address, State.QUEUED.value, 1, now, lease_until, 0, "invite", actor, now)
         for client_id, address, _ in chosen],
        returning=[Invitation.id, Invitation.client, Invitation.email],
    )
    insert_rows(
        _AUDIT_FIELDS,
        [(practice_id, client_id, invitation_id, now, actor, "invited", _audit_detail(address))
         for invitation_id, client_id, address in created],
    )
    return [int(invitation_id) for invitation_id, _, _ in created]


def _audit_detail(address: str) -> str:
    return json.dumps({"kind": "invite", "mass": True, "to": address}, sort_keys=True)


def _write_postgres(practice_id: int, chosen: list[tuple[int, str, bool]], *, actor: str, now: datetime) -> list[int]:
    """The same rows as ``_write_rows`` in one PostgreSQL statement: the batch goes as three
    arrays, and the invitations' ids flow into their audit rows inside the server.

    Against three multi-row ``INSERT … VALUES`` this sends no per-value parameters for the
    server to parse and builds no audit rows in Python; ``bench/bench_mass.py`` measures it.
    """
    lease_until = now + timedelta(seconds=get_settings().step_lease_s)
    stamp = Invitation.created_at.db_value(now)
    params = {
        "clients": [client_id for client_id, _, _ in chosen],
        "emails": [address for _, address, _ in chosen],
        "new_access": [not has_access for _, _, has_access in chosen],
        "practice": practice_id, "now": stamp, "lease_until": Invitation.lease_until.db_value(lease_until),
        "actor": actor, "queued": State.QUEUED.value,
        **{f"default_{f.name}": f.db_value(f.default) for f in _ACCESS_DEFAULTS},
    }
    cursor = db.execute_sql(_pg_batch_sql(), params)
    return [int(invitation_id) for (invitation_id,) in cursor.fetchall()]


#: PortalAccess columns a new row takes from the model's defaults (permissions).
_ACCESS_DEFAULTS: list[Field] = [
    f for f in PortalAccess._meta.sorted_fields
    if f.default is not None and f.name not in ("client", "practice", "updated_at")
]


@functools.cache
def _pg_batch_sql() -> str:
    defaults = ", ".join(f'"{f.column_name}"' for f in _ACCESS_DEFAULTS)
    default_values = ", ".join(f"%(default_{f.name})s" for f in _ACCESS_DEFAULTS)
    return f"""
WITH chosen AS (
    SELECT * FROM unnest(%(clients)s::integer[], %(emails)s::text[], %(new_access)s::boolean[])
        AS t(client_id, email, new_access)
), access AS (
    INSERT INTO portal_access (client_id, practice_id, updated_at, {defaults})
    SELECT client_id, %(practice)s, %(now)s, {default_values} FROM chosen WHERE new_access
    ON CONFLICT DO NOTHING
), created AS (
    INSERT INTO invitation (practice_id, client_id, email, state, version, next_action_at, lease_until,
                            reminders_sent, kind, created_by, created_at)
    SELECT %(practice)s, client_id, email, %(queued)s, 1, %(now)s, %(lease_until)s, 0, 'invite', %(actor)s, %(now)s
    FROM chosen
    RETURNING id, client_id, email
), audited AS (
    INSERT INTO audit_event (practice_id, client_id, invitation_id, at, actor, action, detail)
    SELECT %(practice)s, client_id, id, %(now)s, %(actor)s, 'invited',
           jsonb_build_object('kind', 'invite', 'mass', true, 'to', email)::text
    FROM created
)
SELECT id FROM created"""
