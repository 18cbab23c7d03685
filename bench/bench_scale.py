"""Scale-out (issue 6): throughput with 1, then 2 Dramatiq worker processes, PostgreSQL + Redis,
end to end to an SMTP sink (Postfix's C ``smtp-sink``; aiosmtpd if it cannot be had).

Three figures, each a median of ``--repeat`` runs on a fresh database, process counts
interleaved so a noisy minute touches both alike:

* first sends: invitations queued and nudged (20 ids a message, the API's path); the clock
  runs from the moment the queue starts to shrink until the sink accepted the last email;
* reminders: invitations due for their first reminder, claimed by one in-process sweep in
  batches of 500 and sent by the workers; the clock runs from the sweep's start;
* the sweep alone: due invitations claimed and nudged per second, no worker running (the
  scheduler's capacity, for the sizing table in docs/deploy.md).

    BENCH_REDIS_URL=redis://127.0.0.1:6379/12 \\
    BENCH_PG_URL=postgresql://postgres@127.0.0.1:5432/invites_bench_scale \\
    .venv/bin/python -m bench.bench_scale [--invitations 6000] [--threads 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from bench import common

os.environ["BROKER_URL"] = common.REDIS_URL  # before the engine reads its settings

LOGS = common.CACHE / "logs"
PROCESS_COUNTS = (1, 2)


class AiosmtpdSink(common.CountingSink):
    """The fallback sink: aiosmtpd in this process, counting accepted messages like ``SmtpSink``."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self._count = 0
        self._changed = threading.Condition()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with sink._changed:
                    sink._count += 1
                    sink._changed.notify_all()
                return "250 2.0.0 OK"

        self.port = common.free_port()
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def close(self) -> None:
        self._controller.stop()


@contextmanager
def any_sink() -> Iterator[tuple[Any, str]]:
    """Postfix's smtp-sink when it can be fetched and run, else aiosmtpd; yields (sink, its name)."""
    try:
        sink: Any = common.SmtpSink()
        name = "Postfix smtp-sink"
    except Exception as exc:  # noqa: BLE001 - any reason (no apt, no network) means the fallback
        print(f"# smtp-sink unavailable ({exc!r}); using aiosmtpd", flush=True)
        sink, name = AiosmtpdSink(), "aiosmtpd"
    try:
        yield sink, name
    finally:
        sink.close()


def _load_due_reminders(n: int) -> list[int]:
    """``n`` invitations sent 3 days and a minute ago, due for their first reminder now."""
    now = common.now_utc()
    sent_at = now - timedelta(days=3, minutes=1)
    practice_id = common.make_practice(sent_at)
    clients = common.load_clients(practice_id, n, sent_at)
    return common.load_invitations(practice_id, clients, sent_at, state="sent",
                                   next_action_at=lambda i: now - timedelta(seconds=1))


def run(path: str, n: int, sink: Any, *, processes: int, threads: int) -> tuple[float, list[float]]:
    """Emails per second along ``path`` ("first" or "reminders"), and the workers' peak RSS (MiB)."""
    from engine.core.broker import QUEUE
    from engine.core.db import db
    from engine.core.models import Invitation
    from workflows.actors import enqueue_steps
    from workflows.sweep import sweep

    with common.fresh_database("postgres") as url:
        if path == "first":
            now = common.now_utc()
            practice_id = common.make_practice(now)
            ids = common.load_invitations(practice_id, common.load_clients(practice_id, n, now), now,
                                          lease_until=now + timedelta(hours=1))
        else:
            ids = _load_due_reminders(n)
        common.analyze()
        db.close()
        common.flush_redis()
        client = common.redis_client()
        if path == "first":
            assert enqueue_steps(ids) == n
            messages = client.llen(f"dramatiq:{QUEUE}")
        accepted_before = sink.count()
        env = {"DATABASE_URL": url, "MAIL_URL": sink.url, "LOG_FORMAT": "text"}
        with common.dramatiq_workers("worker", processes=processes, threads=threads, env=env,
                                     log_path=LOGS / f"scale-{path}-{processes}.log") as pool:
            if path == "first":
                started = common.wait_drain_start(client, f"dramatiq:{QUEUE}", messages, timeout_s=120)
            else:
                pool.wait_ready()
                started = time.perf_counter()
                with db.connection_context():
                    result = sweep(common.now_utc(), enqueue=enqueue_steps, batch_size=500, lease_s=600)
                assert result.claimed == n, result
            try:
                finished = sink.wait_for(accepted_before + n, timeout_s=900)
            finally:
                pool.check()
            rss = pool.peak_rss_mib()
        with db.connection_context():
            done = Invitation.select().where(Invitation.state == ("sent" if path == "first" else "reminded")).count()
            if path == "first":
                SIZES.update(_bytes_per_row())
        if done != n:
            raise RuntimeError(f"{done} of {n} invitations moved on ({path}, {processes} processes); see {LOGS}")
    return n / (finished - started), rss


#: PostgreSQL bytes per row (table + indexes) after first sends: one row per invitation in each.
SIZES: dict[str, float] = {}


def _bytes_per_row() -> dict[str, float]:
    from engine.core.db import db
    from engine.core.models import AuditEvent, Client, Invitation, OutboxEmail, Token

    sizes = {}
    for model in (Client, Invitation, Token, OutboxEmail, AuditEvent):
        table = model._meta.table_name
        rows, size = db.execute_sql(
            f'SELECT (SELECT count(*) FROM "{table}"), pg_total_relation_size(%s)', (table,)
        ).fetchone()
        if rows:
            sizes[table] = size / rows
    return sizes


def run_sweep_alone(n: int) -> tuple[float, float]:
    """(claims/s with nudges to Redis, claims/s with the enqueue left out), one sweeper."""
    from engine.core.db import db
    from workflows.actors import enqueue_steps
    from workflows.sweep import sweep

    rates = []
    for enqueue in (enqueue_steps, len):
        with common.fresh_database("postgres"):
            _load_due_reminders(n)
            common.analyze()
            common.flush_redis()
            with db.connection_context():
                result = sweep(common.now_utc(), enqueue=enqueue, batch_size=500, lease_s=600, max_batches=10**6)
            assert result.claimed == n, result
            rates.append(n / (result.duration_ms / 1000))
    common.flush_redis()
    return rates[0], rates[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invitations", type=int, default=6_000, help="emails per run")
    parser.add_argument("--sweep", type=int, default=50_000, help="due invitations for the sweep-alone figure")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)

    from engine.core.logs import setup_logging
    from engine.core.runtime import boot

    setup_logging("text", level=30)
    boot()
    common.header(f"scale-out: 1 → 2 worker processes × {args.threads} threads, PostgreSQL + Redis")
    figures = {
        (path, p): common.Figure(f"{label}, {p} process{'es' if p > 1 else ''}", "emails/s")
        for path, label in (("first", "first sends"), ("reminders", "reminders via the sweep"))
        for p in PROCESS_COUNTS
    }
    rss: list[float] = []
    with any_sink() as (sink, sink_name):
        print(f"# sink: {sink_name}", flush=True)
        for round_ in range(1, args.repeat + 1):
            counts = PROCESS_COUNTS if round_ % 2 else tuple(reversed(PROCESS_COUNTS))
            for path in ("first", "reminders"):
                for p in counts:
                    rate, peaks = run(path, args.invitations, sink, processes=p, threads=args.threads)
                    figures[(path, p)].values.append(rate)
                    rss.extend(peaks)
                    print(f"round {round_}: {figures[(path, p)].name}: {rate:,.0f}/s (load {common.load():.2f})",
                          flush=True)
    with_redis, claim_only = run_sweep_alone(args.sweep)
    for fig in figures.values():
        print(fig)
    for path in ("first", "reminders"):
        one, two = figures[(path, 1)].median, figures[(path, 2)].median
        print(f"{path}: 2 processes / 1 process = {two / one:.2f}×")
    print(f"sweep alone, {args.sweep:,} due: {with_redis:,.0f} claimed+nudged/s, {claim_only:,.0f} claimed/s")
    print(f"worker process peak RSS: {max(rss):.0f} MiB")
    print("PostgreSQL bytes per row with indexes: " + ", ".join(f"{t} {b:,.0f}" for t, b in SIZES.items()))
    print(f"# load at the end {common.load():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
