"""The figures ops watch: queues, invitations by state, the due backlog, failures, heartbeats.

Queue counts are read from the broker's Redis keys (Dramatiq has no queue-size API; see
``docs/operations.md``); everything about invitations comes from the database, the truth.
Every function takes ``now``; the caller holds a database connection.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import dramatiq
import redis
from peewee import JOIN, fn

from engine.core.broker import QUEUES
from engine.core.heartbeat import redis_client
from engine.core.models import Invitation, OutboxEmail, Practice
from engine.core.settings import Settings
from engine.monitoring import heartbeats
from workflows import schedule
from workflows.invitation import State
from workflows.sweep import due_condition

#: "Deliveries failed in the last hour", and the latency window of the metrics.
RECENT_S = 3600
#: Email kinds the outbox knows; a kind not listed still shows once a row has it.
EMAIL_KINDS = ("invitation", "reminder", "reset")


@dataclass(frozen=True)
class QueueCounts:
    """One Dramatiq queue. ``in_flight``/``orphaned`` are None where the broker cannot tell."""

    queue: str
    ready: int
    delayed: int
    in_flight: int | None
    #: Fetched by a worker whose Dramatiq heartbeat stopped: waiting for Redis maintenance.
    orphaned: int | None
    dead: int


@dataclass(frozen=True)
class Backlog:
    """Follow-ups whose time has passed and that no sweep has claimed yet."""

    due: int
    oldest_due_at: datetime | None
    oldest_age_s: float | None


@dataclass(frozen=True)
class Failures:
    """Emails whose last attempt, within the last hour, failed: for good, or to be retried."""

    failed: dict[str, int]
    retrying: dict[str, int]

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())


@dataclass(frozen=True)
class OpsStatus:
    """Everything ``invites ops status`` shows; ``problems`` says what needs a person."""

    at: datetime
    broker: str
    broker_error: str | None
    queues: list[QueueCounts]
    invitations: dict[str, int]
    backlog: Backlog
    failures: Failures
    workers: list[dict[str, Any]]
    schedulers: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    @property
    def dead_letters(self) -> int:
        return sum(q.dead for q in self.queues)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dead_letters"] = self.dead_letters
        out["failures"]["total_failed"] = self.failures.total_failed
        return _iso(out)


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _iso(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_iso(v) for v in value]
    return value


# --- queues ---------------------------------------------------------------------------------

def redis_queue_counts(
    client: redis.Redis,
    *,
    namespace: str = "dramatiq",
    queues: Iterable[str] = QUEUES,
    heartbeat_timeout_ms: int = 60_000,
    now_ms: int | None = None,
) -> list[QueueCounts]:
    """Per queue: ``LLEN <q>``, ``HLEN <q>.DQ.msgs``, ``ZCARD <q>.XQ`` and the acks sets.

    In flight = the members of every ``__acks__.<worker>.<q>`` set (fetched, not acked yet);
    orphaned = those of workers missing from ``__heartbeats__`` for ``heartbeat_timeout_ms``,
    which Dramatiq gives back only when a maintenance pass runs on that queue.
    """
    queues = list(queues)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms  # Dramatiq's beats are wall-clock
    pipe = client.pipeline(transaction=True)
    for q in queues:
        pipe.llen(f"{namespace}:{q}")
        pipe.hlen(f"{namespace}:{q}.DQ.msgs")
        pipe.zcard(f"{namespace}:{q}.XQ")
    pipe.zrange(f"{namespace}:__heartbeats__", 0, -1, withscores=True)
    *sizes, beats = pipe.execute()
    last_beat = {_text(worker): score for worker, score in beats}

    prefix = f"{namespace}:__acks__."
    ack_keys = [_text(k) for k in client.scan_iter(match=prefix + "*", count=1000)]
    pipe = client.pipeline(transaction=False)
    for key in ack_keys:
        pipe.scard(key)
    in_flight = dict.fromkeys(queues, 0)
    orphaned = dict.fromkeys(queues, 0)
    for key, members in zip(ack_keys, pipe.execute() if ack_keys else [], strict=True):
        worker_id, _, queue = key[len(prefix):].partition(".")
        if queue not in in_flight:  # a delay queue's acks: counted in HLEN <q>.DQ.msgs already
            continue
        in_flight[queue] += members
        if last_beat.get(worker_id, 0) < now_ms - heartbeat_timeout_ms:
            orphaned[queue] += members
    return [
        QueueCounts(q, sizes[3 * i], sizes[3 * i + 1], in_flight[q], orphaned[q], sizes[3 * i + 2])
        for i, q in enumerate(queues)
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def queue_counts(broker: dramatiq.Broker) -> list[QueueCounts]:
    """Queue counts of ``broker``: from its Redis keys, or RabbitMQ's own message counts."""
    client = redis_client(broker)
    if client is not None:
        return redis_queue_counts(
            client,
            namespace=getattr(broker, "namespace", "dramatiq"),
            heartbeat_timeout_ms=int(getattr(broker, "heartbeat_timeout", 60_000)),
        )
    counts = []
    for q in QUEUES:  # RabbitMQ counts only what waits in a queue: unacked deliveries are unknown
        ready, delayed, dead = broker.get_queue_message_counts(q)  # type: ignore[attr-defined]
        counts.append(QueueCounts(q, ready, delayed, None, None, dead))
    return counts


# --- the database's figures -----------------------------------------------------------------

def invitations_by_state() -> dict[str, int]:
    """How many invitations are in each state (every state listed, zeros included)."""
    counts = dict.fromkeys((s.value for s in State), 0)
    query = Invitation.select(Invitation.state, fn.COUNT(Invitation.id)).group_by(Invitation.state).tuples()
    for state, n in cast(Iterable[tuple[str, int]], query):
        counts[state] = int(n)
    return counts


def due_backlog(now: datetime) -> Backlog:
    """Live invitations due at ``now`` and not under a lease (what the next sweep will claim)."""
    due = Invitation.select().where(due_condition(now)).count()
    oldest = (
        Invitation.select(Invitation.next_action_at)
        .where(due_condition(now))
        .order_by(Invitation.next_action_at)
        .first()
    )
    if oldest is None:
        return Backlog(due, None, None)
    age_s = max(0.0, (now - oldest.next_action_at).total_seconds())
    return Backlog(due, oldest.next_action_at, age_s)


def recent_failures(now: datetime, *, window_s: int = RECENT_S) -> Failures:
    """Emails whose last attempt (``sending_since``) was within ``window_s`` and failed."""
    since = now - timedelta(seconds=window_s)
    failed: dict[str, int] = {}
    retrying: dict[str, int] = {}
    query = (
        OutboxEmail.select(OutboxEmail.kind, OutboxEmail.status, fn.COUNT(OutboxEmail.id))
        .where(
            (OutboxEmail.sending_since >= since)
            & (
                (OutboxEmail.status == "failed")
                | ((OutboxEmail.status == "pending") & OutboxEmail.last_error.is_null(False))
            )
        )
        .group_by(OutboxEmail.kind, OutboxEmail.status)
        .tuples()
    )
    for kind, status, n in cast(Iterable[tuple[str, str, int]], query):
        (failed if status == "failed" else retrying)[kind] = int(n)
    return Failures(failed, retrying)


def email_totals() -> dict[tuple[str, str], int]:
    """Outbox rows by (kind, status), ever: the sent and failed counters of the metrics."""
    query = (
        OutboxEmail.select(OutboxEmail.kind, OutboxEmail.status, fn.COUNT(OutboxEmail.id))
        .group_by(OutboxEmail.kind, OutboxEmail.status)
        .tuples()
    )
    return {(kind, status): int(n) for kind, status, n in cast(Iterable[tuple[str, str, int]], query)}


_REMINDER_KEY = re.compile(r"-reminder-(\d+)$")


def delivery_latencies(now: datetime, *, window_s: int = RECENT_S) -> dict[str, list[float]]:
    """Seconds from "this email is owed" to the SMTP server's accept, for emails sent lately.

    Owed since: an invitation email, the invitation's creation; a reminder, the moment it fell
    due (its cadence from ``sent_at``, moved to the send window, as the schedule computes it);
    anything else, its outbox row's creation. So the figure includes the sweep's interval, the
    wait in the queue, retries and the SMTP conversation: what a client experiences.
    """
    since = now - timedelta(seconds=window_s)
    rows = (
        OutboxEmail.select(
            OutboxEmail.kind,
            OutboxEmail.dedupe_key,
            OutboxEmail.created_at,
            OutboxEmail.sent_at,
            OutboxEmail.practice,
            Invitation.created_at,
            Invitation.sent_at,
        )
        .join(Invitation, JOIN.LEFT_OUTER, on=(OutboxEmail.invitation == Invitation.id))
        .where((OutboxEmail.status == "sent") & (OutboxEmail.sent_at >= since))
        .tuples()  # plain tuples: this may be tens of thousands of rows at scrape time
    )
    practices: dict[int, Practice] = {}
    out: dict[str, list[float]] = {}
    Row = tuple[str, str, datetime, datetime, int, datetime | None, datetime | None]
    for kind, key, created_at, sent_at, practice_id, invited_at, first_sent_at in cast(Iterable[Row], rows):
        start = created_at
        if kind == "invitation" and invited_at is not None:
            start = invited_at
        elif kind == "reminder" and first_sent_at is not None and (match := _REMINDER_KEY.search(key)):
            if practice_id not in practices:
                practices[practice_id] = Practice.get_by_id(practice_id)
            practice = practices[practice_id]
            due = schedule.reminder_due_at(practice, Invitation(sent_at=first_sent_at), int(match.group(1)))
            if due is not None:
                start = schedule.next_window_start(practice, due)
        out.setdefault(kind, []).append(max(0.0, (sent_at - start).total_seconds()))
    return out


# --- all together ---------------------------------------------------------------------------

def collect(now: datetime, *, broker: dramatiq.Broker, settings: Settings) -> OpsStatus:
    """Every figure at ``now``. A broker that does not answer is reported, not raised."""
    kind = "redis" if redis_client(broker) is not None else "rabbitmq"
    broker_error = None
    queues: list[QueueCounts] = []
    workers: list[dict[str, Any]] = []
    schedulers: list[dict[str, Any]] = []
    try:
        queues = queue_counts(broker)
        client = redis_client(broker)
        if client is not None:
            workers, schedulers = heartbeats.workers(client), heartbeats.schedulers(client)
    except Exception as exc:  # noqa: BLE001 - Redis or pika: either way the broker did not answer
        broker_error = f"{type(exc).__name__}: {exc}"
    status = OpsStatus(
        at=now,
        broker=kind,
        broker_error=broker_error,
        queues=queues,
        invitations=invitations_by_state(),
        backlog=due_backlog(now),
        failures=recent_failures(now),
        workers=workers,
        schedulers=schedulers,
    )
    status.problems.extend(problems(status, settings))
    return status


def backlog_alert_s(settings: Settings) -> int:
    """A due follow-up older than this means the sweep is not keeping up (or not running)."""
    return max(60, 3 * settings.sweep_interval_s)


def problems(status: OpsStatus, settings: Settings) -> list[str]:
    """What needs a person, one line each, most urgent first (empty when all is well)."""
    found = []
    if status.broker_error:
        found.append(f"the broker did not answer ({status.broker_error})")
    else:
        if not status.workers and status.broker == "redis":
            found.append("no worker is alive: nothing is being sent")
        if not status.schedulers and status.broker == "redis":
            found.append("no scheduler is alive: reminders and expiries are not being claimed")
    age = status.backlog.oldest_age_s
    if age is not None and age > backlog_alert_s(settings):
        found.append(f"{_n(status.backlog.due, 'follow-up is', 'follow-ups are')} overdue; the oldest by {_human(age)}")
    orphaned = sum(q.orphaned or 0 for q in status.queues)
    if orphaned:
        found.append(f"{_n(orphaned, 'message is', 'messages are')} held by workers that stopped: "
                     "the sweep re-sends them after the lease")
    if status.dead_letters:
        found.append(f"{_n(status.dead_letters, 'dead letter')}: see `invites ops dead-letters list`")
    if status.failures.total_failed:
        found.append(f"{_n(status.failures.total_failed, 'email', 'emails')} failed for good in the last hour")
    return found


def _n(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def _human(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def human_duration(seconds: float | None) -> str:
    """``None`` → "-"; otherwise the largest whole unit (``3 h``, ``12 min``, ``40 s``)."""
    return "-" if seconds is None else _human(seconds)
