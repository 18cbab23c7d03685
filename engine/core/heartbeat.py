"""Heartbeats, the writing side: workers and schedulers say they are alive, in Redis, with a TTL.

A worker process writes ``invites:heartbeat:worker:<host>:<pid>`` every ``BEAT_INTERVAL_S``
with a TTL of ``WORKER_TTL_S``: the key exists only while the process lives. The scheduler
writes ``invites:heartbeat:scheduler:<host>:<pid>`` after each sweep, with the sweep's duration
and batch sizes, and adds the sweep to running totals (``invites:sweeps``) for the metrics.
Heartbeats are about processes, so a Redis error here is logged and never stops the work.
``engine.monitoring.heartbeats`` reads them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from datetime import datetime
from typing import Any, Protocol

import dramatiq
import redis
from dramatiq.middleware import Middleware

from engine.core import clock

logger = logging.getLogger("invites.heartbeat")

PREFIX = "invites:heartbeat:"
WORKER_PREFIX = PREFIX + "worker:"
SCHEDULER_PREFIX = PREFIX + "scheduler:"
#: Running totals of every sweep (a hash): sweeps, claimed, enqueued, batches, duration_ms.
SWEEP_TOTALS_KEY = "invites:sweeps"

#: A worker beats this often, and its key lives this long: three missed beats and it is gone.
BEAT_INTERVAL_S = 5
WORKER_TTL_S = 20
#: The scheduler's key lives this many sweep intervals (and never less than ``MIN_SCHEDULER_TTL_S``).
SCHEDULER_TTL_INTERVALS = 3
MIN_SCHEDULER_TTL_S = 30


def redis_client(broker: dramatiq.Broker) -> redis.Redis | None:
    """The broker's Redis client, or None when the broker is not Redis (RabbitMQ)."""
    client = getattr(broker, "client", None)
    return client if isinstance(client, redis.Redis) else None


def _identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


class WorkerHeartbeat(Middleware):
    """Dramatiq middleware: a worker process's heartbeat, with what it has done since it booted.

    The beat comes from a thread of its own, so a worker busy with long steps still shows as
    alive; ``in_progress`` and ``last_message_at`` then tell whether it is moving.
    """

    def __init__(self, *, interval_s: float = BEAT_INTERVAL_S, ttl_s: int = WORKER_TTL_S) -> None:
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._facts: dict[str, Any] = {}
        self._failed_beats = 0

    @property
    def key(self) -> str:
        ident = _identity()
        return f"{WORKER_PREFIX}{ident['host']}:{ident['pid']}"

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._client = redis_client(broker)
        if self._client is None:
            return
        queues = sorted(getattr(worker, "consumer_whitelist", None) or broker.get_declared_queues())
        with self._lock:
            self._facts = {
                **_identity(),
                "threads": worker.worker_threads,
                "queues": [q for q in queues if not q.endswith(".DQ")],
                "started_at": clock.now().isoformat(),
                "processed": 0,
                "failed": 0,
                "in_progress": 0,
                "last_message_at": None,
            }
        self.beat()  # at once: a worker is visible as soon as it has booted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="invites-heartbeat", daemon=True)
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            self.beat()

    def beat(self, now: datetime | None = None) -> None:
        """Write this worker's heartbeat now (the thread calls it every ``interval_s``)."""
        if self._client is None:
            return
        with self._lock:
            facts = {**self._facts, "last_beat": (now or clock.now()).isoformat()}
        try:
            self._client.set(self.key, json.dumps(facts), ex=self.ttl_s)
            self._failed_beats = 0
        except redis.RedisError as exc:
            self._failed_beats += 1
            if self._failed_beats == 1:  # once per outage, not every five seconds
                logger.warning("heartbeat not written", extra={"action": "heartbeat_failed", "error": str(exc)})

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 1)
        self._stop = self._thread = None
        if self._client is not None:
            try:
                self._client.delete(self.key)  # a clean stop is not a death: no stale key
            except redis.RedisError:
                pass

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        with self._lock:
            if self._facts:
                self._facts["in_progress"] += 1

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        with self._lock:
            if self._facts:
                self._facts["in_progress"] = max(0, self._facts["in_progress"] - 1)
                self._facts["processed"] += 1
                self._facts["failed"] += exception is not None
                self._facts["last_message_at"] = clock.now().isoformat()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self.after_process_message(broker, message)


class SweepOutcome(Protocol):
    """What one sweep did (``workflows.sweep.SweepResult`` is one)."""

    @property
    def claimed(self) -> int: ...
    @property
    def enqueued(self) -> int: ...
    @property
    def batches(self) -> int: ...
    @property
    def duration_ms(self) -> float: ...


def record_sweep(
    result: SweepOutcome,
    *,
    now: datetime,
    interval_s: int,
    client: redis.Redis,
) -> bool:
    """The scheduler's heartbeat after a sweep, and the sweep added to the running totals.

    Returns False (and logs) when Redis did not take it: the sweep itself is done either way.
    """
    ident = _identity()
    last: dict[str, Any] = {
        "claimed": int(result.claimed),
        "enqueued": int(result.enqueued),
        "batches": int(result.batches),
        "duration_ms": round(float(result.duration_ms), 3),
    }
    facts = {**ident, "interval_s": interval_s, "last_beat": now.isoformat(), "last_sweep": last}
    ttl_s = max(MIN_SCHEDULER_TTL_S, SCHEDULER_TTL_INTERVALS * interval_s)
    try:
        pipe = client.pipeline(transaction=True)
        pipe.set(f"{SCHEDULER_PREFIX}{ident['host']}:{ident['pid']}", json.dumps(facts), ex=ttl_s)
        pipe.hincrby(SWEEP_TOTALS_KEY, "sweeps", 1)
        for field in ("claimed", "enqueued", "batches"):
            pipe.hincrby(SWEEP_TOTALS_KEY, field, last[field])
        pipe.hincrbyfloat(SWEEP_TOTALS_KEY, "duration_ms", last["duration_ms"])
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("scheduler heartbeat not written", extra={"action": "heartbeat_failed", "error": str(exc)})
        return False
    return True


def under_dramatiq_cli() -> bool:
    """Whether this is a worker process the ``dramatiq`` command started."""
    import multiprocessing
    import sys

    return "dramatiq.cli" in sys.modules and multiprocessing.parent_process() is not None


def dramatiq_prometheus(enabled: bool) -> Middleware | None:
    """Dramatiq's ``Prometheus`` middleware, if ``enabled`` and run by the ``dramatiq`` command.

    It relies on that command: the command forks its exposition server (``dramatiq_prom_host``,
    ``dramatiq_prom_port``, default 0.0.0.0:9191) and the worker processes write their metrics
    to files in ``dramatiq_prom_db``. In a process of ours (tests, ``invites`` commands) there
    is nothing to fork and the metrics would never be read. Off by default (``WORKER_PROMETHEUS``):
    on every interface, one port and one folder per host, it is for a deployment that chose them.
    """
    if not enabled or not under_dramatiq_cli():
        return None
    from dramatiq.middleware.prometheus import Prometheus

    return Prometheus()
