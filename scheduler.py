"""Process entry: APScheduler runs the periodic sweep. Run ``python scheduler.py`` (or ``invites scheduler``).

Only wiring. It exits 3 when the database or the broker does not answer at start, 1 when the
schema is not upgraded (``engine.core.runtime.start_process``); once running, it rides out outages.
The sweep is safe with several scheduler processes at once (the claim is), so a second one is a
spare, not a hazard.
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
    from engine.monitoring.heartbeat import record_sweep
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
    record_sweep(result, now=clock.now(), interval_s=settings.sweep_interval_s)


def build_scheduler(settings: Settings) -> BlockingScheduler:
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


def main() -> int:
    settings = start_process("scheduler")
    scheduler = build_scheduler(settings)

    def stop(signum: int, frame: FrameType | None) -> None:
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("scheduler started", extra={"action": "scheduler_started", "interval_s": settings.sweep_interval_s})
    scheduler.start()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
