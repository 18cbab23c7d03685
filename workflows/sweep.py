"""The periodic sweep: claim due follow-ups in batches and nudge their steps.

A claim sets the invitation's lease; a step that finishes clears it and sets the next
``next_action_at``. A message that was lost, or a worker that died mid-step, leaves the lease
to run out, and the next sweep claims the invitation again: recovery is bounded by
``STEP_LEASE_S``, not by the broker's own redelivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from peewee import fn

from engine.core.db import is_postgres, write
from engine.core.models import IdempotencyKey, Invitation, Practice
from workflows.invitation import LIVE_STATES

logger = logging.getLogger("invites.sweep")

Enqueue = Callable[[list[int]], int]


@dataclass(frozen=True)
class SweepResult:
    claimed: int
    enqueued: int
    batches: int
    duration_ms: float


def due_condition(now: datetime) -> object:
    """Live, due, not under a lease, and not in a practice whose portal is off."""
    paused = Practice.select(Practice.id).where(Practice.portal_enabled == False)  # noqa: E712
    return (
        Invitation.state.in_([s.value for s in LIVE_STATES])
        & (Invitation.next_action_at <= now)
        & (Invitation.lease_until.is_null() | (Invitation.lease_until <= now))
        & Invitation.practice.not_in(paused)
    )


def claim_due(now: datetime, *, limit: int, lease_s: int) -> list[int]:
    """Claim up to ``limit`` due invitations, oldest first; safe with several sweepers at once.

    One statement selects and leases them (``UPDATE … WHERE id IN (SELECT … LIMIT n)
    RETURNING``): no round trip carrying a thousand ids back and forth. PostgreSQL skips rows
    another sweeper has locked; SQLite serialises the claim with ``BEGIN IMMEDIATE`` and the
    lease makes a second claim of the same row impossible.
    """
    due = (
        Invitation.select(Invitation.id)
        .where(due_condition(now))
        .order_by(Invitation.next_action_at)
        .limit(limit)
    )
    chosen = Invitation.id.in_(due)
    if is_postgres():
        # PostgreSQL plans "IN (subquery)" as a join that scans the whole table (a cost that
        # grows with the pending count); "= ANY(ARRAY(subquery))" looks the ids up by key.
        chosen = Invitation.id == fn.ANY(fn.ARRAY(due.for_update(skip_locked=True)))
    claim = (
        Invitation.update(lease_until=now + timedelta(seconds=lease_s))
        .where(chosen)
        .returning(Invitation.id, Invitation.next_action_at)
    )
    with write():
        rows = list(claim.tuples().execute())
    return [row_id for row_id, _ in sorted(rows, key=lambda row: (row[1], row[0]))]


def sweep(
    now: datetime,
    *,
    enqueue: Enqueue,
    batch_size: int = 500,
    lease_s: int = 300,
    max_batches: int = 1000,
) -> SweepResult:
    """Claim every due invitation in batches and enqueue its step; a plain function of ``now``."""
    started = time.perf_counter()
    claimed = enqueued = batches = 0
    while batches < max_batches:
        ids = claim_due(now, limit=batch_size, lease_s=lease_s)
        if not ids:
            break
        batches += 1
        claimed += len(ids)
        # A failed enqueue is not lost: the lease runs out and a later sweep claims it again.
        enqueued += enqueue(ids)
        if len(ids) < batch_size:
            break
    purge_expired_keys(now)
    result = SweepResult(claimed, enqueued, batches, (time.perf_counter() - started) * 1000)
    if claimed:
        logger.info(
            "sweep claimed %d due invitations",
            claimed,
            extra={"action": "sweep", "claimed": claimed, "enqueued": enqueued, "batches": batches},
        )
    return result


def purge_expired_keys(now: datetime) -> int:
    """Forget idempotency keys older than their 24 h."""
    return int(IdempotencyKey.delete().where(IdempotencyKey.expires_at <= now).execute())
