"""The periodic sweep: the job APScheduler runs in the scheduler process (``scheduler.py``).

Follow-ups come from here, not from one scheduled job per invitation: every ``SWEEP_INTERVAL_S``
the sweep claims what is due and enqueues its steps. The sweep is safe with several scheduler
processes at once (the claim is), so a second one is a spare, not a hazard.
"""

from __future__ import annotations

import logging
import signal
from datetime import UTC, datetime
from types import FrameType

from apscheduler.schedulers.blocking import BlockingScheduler

from engine.core import clock
from engine.core.db import connection
from engine.core.runtime import start_process
from engine.core.settings import Settings, get_settings

logger = logging.getLogger("invites.scheduler")


def run_sweep() -> None:
    """One sweep, then the scheduler's heartbeat (Redis brokers)."""
    from engine.core.heartbeat import record_sweep, redis_client
    from engine.core.runtime import ensure_broker
    from workflows.actors import enqueue_steps
    from workflows.sweep import sweep

    settings = get_settings()
    with connection():
        result = sweep(
            clock.now(),
            enqueue=enqueue_steps,
            batch_size=settings.sweep_batch_size,
            lease_s=settings.step_lease_s,
        )
    if (client := redis_client(ensure_broker())) is not None:  # RabbitMQ: no heartbeats
        record_sweep(result, now=clock.now(), interval_s=settings.sweep_interval_s, client=client)


def build_scheduler(settings: Settings) -> BlockingScheduler:
    """APScheduler's blocking scheduler with the sweep as its one interval job."""
    scheduler = BlockingScheduler(timezone=UTC)
    scheduler.add_job(
        run_sweep,
        "interval",
        seconds=settings.sweep_interval_s,
        id="sweep",
        coalesce=True,
        max_instances=1,
        # A late sweep still runs (once): the default grace of 1 s would drop it.
        misfire_grace_time=settings.sweep_interval_s,
        # APScheduler counts in wall-clock time; the engine's clock may be shifted (CLOCK_OFFSET_FILE),
        # and a first run "now" in shifted time would be days away.
        next_run_time=datetime.now(UTC),
    )
    return scheduler


def run() -> int:
    """The scheduler process: the start-up check, then the sweep every ``SWEEP_INTERVAL_S`` until a signal."""
    settings = start_process("scheduler")
    scheduler = build_scheduler(settings)

    def stop(signum: int, frame: FrameType | None) -> None:
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("scheduler started", extra={"action": "scheduler_started", "interval_s": settings.sweep_interval_s})
    scheduler.start()
    return 0
