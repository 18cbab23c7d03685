"""Target 1: invitations from enqueue to SMTP accept, against a no-op Dramatiq actor and a no-op
Celery task on the same Redis, with the same worker configuration, in one run.

Each peer's messages are queued first; then its workers start (2 processes × 8 threads for
Dramatiq, 2 prefork processes for Celery) and the clock runs from the moment the queue starts
to shrink until the last message is done: for invitations, until Postfix's ``smtp-sink`` has
accepted the last email. Worker start-up is not counted for anyone.

    .venv/bin/python -m bench.bench_e2e [--invitations 10000] [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta

from bench import common

os.environ["BROKER_URL"] = common.REDIS_URL  # before the engine reads its settings

TARGET_VS_DRAMATIQ = 0.4
TARGET_VS_CELERY = 2.0
LOGS = common.CACHE / "logs"
#: Worker CPU (user + system, all worker processes) per invitation or message, in µs.
CPU_US: dict[str, list[float]] = {"noop": [], "sqlite": [], "postgres": []}


def run_invitations(kind: str, n: int, sink: common.SmtpSink, *, processes: int, threads: int) -> float:
    """Invitations per second, queued → accepted by the SMTP sink (fresh database each run)."""
    from engine.core.broker import QUEUE
    from engine.core.db import db
    from engine.core.models import Invitation
    from workflows.actors import enqueue_steps

    with common.fresh_database(kind) as url:
        now = common.now_utc()
        practice_id = common.make_practice(now)
        ids = common.load_invitations(
            practice_id, common.load_clients(practice_id, n, now), now, lease_until=now + timedelta(hours=1)
        )
        db.close()
        common.flush_redis()
        client = common.redis_client()
        assert enqueue_steps(ids) == n
        messages = client.llen(f"dramatiq:{QUEUE}")
        accepted_before = sink.count()
        env = {"DATABASE_URL": url, "MAIL_URL": sink.url, "LOG_FORMAT": "text"}
        with common.dramatiq_workers("worker", processes=processes, threads=threads, env=env,
                                     log_path=LOGS / f"e2e-{kind}.log") as pool:
            started = common.wait_drain_start(client, f"dramatiq:{QUEUE}", messages, timeout_s=120)
            cpu_before = pool.cpu_s()
            try:
                finished = sink.wait_for(accepted_before + n, timeout_s=600)
            finally:
                pool.check()
            CPU_US[kind].append((pool.cpu_s() - cpu_before) / n * 1e6)
        with db.connection_context():
            sent = Invitation.select().where(Invitation.state == "sent").count()
        if sent != n:
            raise RuntimeError(f"{sent} of {n} invitations ended 'sent' ({kind}); see {LOGS}")
    return n / (finished - started)


def run_noop_dramatiq(n: int, *, processes: int, threads: int) -> float:
    from bench import noop_dramatiq

    common.flush_redis()
    for i in range(n):
        noop_dramatiq.noop.send(i)
    client = common.redis_client()
    key = f"dramatiq:{noop_dramatiq.QUEUE}"
    with common.dramatiq_workers("bench.noop_dramatiq", processes=processes, threads=threads,
                                 log_path=LOGS / "e2e-noop-dramatiq.log") as pool:
        started = common.wait_drain_start(client, key, n)
        cpu_before = pool.cpu_s()
        finished = common.wait_empty(client, [("list", key), ("hash", f"{key}.msgs")])
        CPU_US["noop"].append((pool.cpu_s() - cpu_before) / n * 1e6)
    return n / (finished - started)


def run_noop_celery(n: int, *, processes: int) -> float:
    from bench import noop_celery

    common.flush_redis()
    for i in range(n):
        noop_celery.noop.delay(i)
    client = common.redis_client()
    with common.celery_workers("bench.noop_celery", concurrency=processes, queue=noop_celery.QUEUE,
                               log_path=LOGS / "e2e-noop-celery.log"):
        started = common.wait_drain_start(client, noop_celery.QUEUE, n)
        finished = common.wait_empty(client, [("list", noop_celery.QUEUE), ("hash", "unacked")])
    return n / (finished - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invitations", type=int, default=10_000)
    parser.add_argument("--noop", type=int, default=20_000, help="no-op Dramatiq messages per run")
    parser.add_argument("--celery", type=int, default=5_000, help="no-op Celery tasks per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--databases", default=",".join(common.DATABASES))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    kinds = [k for k in args.databases.split(",") if k]
    LOGS.mkdir(parents=True, exist_ok=True)

    from engine.core.logs import setup_logging
    from engine.core.runtime import boot

    setup_logging("text", level=30)
    boot()
    common.header(f"end to end: {args.processes} worker processes × {args.threads} threads, smtp-sink")
    figures = {kind: common.Figure(f"invitations ({kind})", "/s") for kind in kinds}
    noop = common.Figure("no-op Dramatiq actor", "msg/s")
    celery = common.Figure(f"no-op Celery task (prefork {args.processes})", "tasks/s")
    with common.smtp_sink() as sink:
        # Interleaved, so a noisy minute touches every peer alike.
        for round_ in range(1, args.repeat + 1):
            noop.values.append(run_noop_dramatiq(args.noop, processes=args.processes, threads=args.threads))
            celery.values.append(run_noop_celery(args.celery, processes=args.processes))
            for kind in kinds:
                figures[kind].values.append(
                    run_invitations(kind, args.invitations, sink, processes=args.processes, threads=args.threads)
                )
            print(f"round {round_}: noop {noop.values[-1]:,.0f}/s, celery {celery.values[-1]:,.0f}/s, "
                  + ", ".join(f"{k} {figures[k].values[-1]:,.0f}/s" for k in kinds)
                  + f" (load {common.load():.2f})", flush=True)
    print(noop)
    print(f"  worker CPU per message: {common.fmt(common.statistics.median(CPU_US['noop']))} µs")
    print(celery)
    for kind in kinds:
        fig = figures[kind]
        print(fig)
        print(f"  worker CPU per invitation: {common.fmt(common.statistics.median(CPU_US[kind]))} µs")
        print("  " + common.verdict("vs no-op Dramatiq", fig.median / noop.median, TARGET_VS_DRAMATIQ))
        print("  " + common.verdict("vs no-op Celery", fig.median / celery.median, TARGET_VS_CELERY))
    print(f"# load at the end {common.load():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
