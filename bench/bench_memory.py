"""Target 6: a worker process's peak memory (VmHWM) after 10,000 and after 100,000 invitations
processed end to end (database, render, SMTP to Postfix's ``smtp-sink``), in one run.

The same worker processes (2 × 8 threads, as in production) handle both stages: the first
10,000 invitations are nudged, their emails awaited, every worker's peak RSS read; then the
other 90,000, and the peaks read again. Flat means within ±10 %.

    .venv/bin/python -m bench.bench_memory [--first 10000] [--total 100000] [--database sqlite]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta

from bench import common

os.environ["BROKER_URL"] = common.REDIS_URL

TARGET_PCT = 10.0
LOGS = common.CACHE / "logs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", type=int, default=10_000)
    parser.add_argument("--total", type=int, default=100_000)
    parser.add_argument("--database", default="sqlite", choices=common.DATABASES)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)

    from engine.core.db import db
    from engine.core.logs import setup_logging
    from engine.core.runtime import boot
    from workflows.actors import enqueue_steps

    setup_logging("text", level=30)
    boot()
    common.header(f"memory: worker peak RSS after {args.first:,} and {args.total:,} invitations ({args.database})")
    with common.smtp_sink() as sink, common.fresh_database(args.database) as url:
        now = common.now_utc()
        practice_id = common.make_practice(now)
        ids: list[int] = []
        while len(ids) < args.total:
            chunk = min(50_000, args.total - len(ids))
            clients = common.load_clients(practice_id, chunk, now, start=len(ids))
            ids += common.load_invitations(practice_id, clients, now, lease_until=now + timedelta(hours=2))
        db.close()
        common.flush_redis()
        env = {"DATABASE_URL": url, "MAIL_URL": sink.url}
        with common.dramatiq_workers("worker", processes=args.processes, threads=args.threads, env=env,
                                     log_path=LOGS / f"memory-{args.database}.log") as pool:
            pool.wait_ready()
            peaks: dict[int, list[float]] = {}
            done = 0
            for upto in (args.first, args.total):
                started = time.perf_counter()
                enqueue_steps(ids[done:upto])
                sink.wait_for(upto, timeout_s=3600)
                pool.check()
                peaks[upto] = pool.peak_rss_mib()
                print(f"  after {upto:,}: peak RSS per worker process "
                      f"{', '.join(f'{p:.1f}' for p in peaks[upto])} MiB "
                      f"({(upto - done) / (time.perf_counter() - started):,.0f} invitations/s, "
                      f"load {common.load():.2f})", flush=True)
                done = upto
    first, last = max(peaks[args.first]), max(peaks[args.total])
    growth = (last - first) / first * 100
    print(f"largest worker peak: {first:.1f} MiB after {args.first:,}, {last:.1f} MiB after {args.total:,}: "
          f"{growth:+.1f} % (target within ±{TARGET_PCT:.0f} %) {'MET' if abs(growth) <= TARGET_PCT else 'MISSED'}")
    print(f"# load at the end {common.load():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
