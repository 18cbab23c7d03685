"""Target 3: claiming 1,000 due follow-ups among 10,000 and then 1,000,000 pending invitations,
on SQLite and PostgreSQL, in one run: the time per claim, and the ratio 1M ÷ 10k.

``claim_due`` is the sweep's claim: select the due rows (oldest first, PostgreSQL skipping
locked ones) and set their lease, in one write transaction. Pending invitations are ``sent``
with a reminder due in the next two weeks; the due ones fell due in the last hour. Rows are
loaded with raw ``executemany`` (``execute_values`` on PostgreSQL) and the planner's statistics
refreshed, as autovacuum would. Between two claims the leases are cleared again.

    .venv/bin/python -m bench.bench_sweep [--pending 10000,1000000] [--due 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta

from bench import common

os.environ["BROKER_URL"] = common.REDIS_URL

TARGET_MS = 50.0
TARGET_GROWTH = 1.5


def _plan(now_param: object) -> str:
    from engine.core.db import db
    from engine.core.models import Invitation
    from workflows.sweep import due_condition

    query = Invitation.select(Invitation.id).where(due_condition(now_param)).order_by(Invitation.next_action_at)
    sql, params = query.limit(1000).sql()
    rows = db.execute_sql(f"EXPLAIN {'QUERY PLAN ' if 'sqlite' in type(db.obj).__name__.lower() else ''}{sql}",
                          params).fetchall()
    return " | ".join(str(r[-1]) if len(r) > 1 else str(r[0]) for r in rows)


def measure(kind: str, sizes: list[int], due: int, repeat: int) -> dict[int, common.Figure]:
    from engine.core.db import db
    from engine.core.models import Invitation
    from workflows.sweep import claim_due

    figures: dict[int, common.Figure] = {}
    with common.fresh_database(kind):
        now = common.now_utc()
        practice_id = common.make_practice(now)
        due_ids = common.load_invitations(
            practice_id, common.load_clients(practice_id, due, now), now, state="sent",
            next_action_at=lambda i: now - timedelta(seconds=3600 - i),
        )
        loaded = 0
        for size in sizes:
            started = time.perf_counter()
            while loaded < size:
                chunk = min(100_000, size - loaded)
                common.load_invitations(
                    practice_id, common.load_clients(practice_id, chunk, now, start=due + loaded), now, state="sent",
                    next_action_at=lambda i, base=loaded, span=size: now + timedelta(
                        seconds=60 + (base + i) * 1_209_600 // span
                    ),
                )
                loaded += chunk
            common.analyze()
            print(f"  {kind}: {loaded:,} pending + {due:,} due loaded in {time.perf_counter() - started:.0f} s; "
                  f"plan: {_plan(now)}", flush=True)
            figure = figures[size] = common.Figure(f"{kind}, {size:,} pending: claim {due:,} due", "ms")
            for _ in range(repeat):
                Invitation.update(lease_until=None).where(Invitation.id.in_(due_ids)).execute()
                started = time.perf_counter()
                claimed = claim_due(now, limit=due, lease_s=300)
                figure.values.append((time.perf_counter() - started) * 1000)
                if len(claimed) != due:
                    raise RuntimeError(f"claimed {len(claimed)} of {due}")
            print(f"  {figure}", flush=True)
        db.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pending", default="10000,1000000", help="pending counts, smallest first")
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--databases", default=",".join(common.DATABASES))
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.pending.split(",")]

    from engine.core.runtime import boot

    boot(with_broker=False)
    common.header(f"sweep: claim {args.due:,} due among {', '.join(f'{s:,}' for s in sizes)} pending")
    for kind in [k for k in args.databases.split(",") if k]:
        figures = measure(kind, sizes, args.due, args.repeat)
        small, large = figures[sizes[0]], figures[sizes[-1]]
        print(small)
        print(large)
        ok = large.median <= TARGET_MS
        print(f"  {kind}: {large.median:.1f} ms per claim at {sizes[-1]:,} pending (target < {TARGET_MS:.0f} ms) "
              f"{'MET' if ok else 'MISSED'}")
        print("  " + common.verdict(f"{kind}: {sizes[-1]:,} ÷ {sizes[0]:,} pending",
                                    large.median / small.median, TARGET_GROWTH, at_most=True))
    print(f"# load at the end {common.load():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
