"""Target 2: a mass invitation of 100,000 clients (rows written and steps enqueued) against one
``actor.send`` per invitation, and against one ``engine.invite`` per client, in one run.

``mass_invite`` writes the practice's invitations (and their access and audit rows) in batches
and nudges them ``NUDGE_BATCH`` ids a message. The peers are rates taken on a sample:
``advance_invitation.send(id)`` in a loop (the enqueue alone, no rows), and the one-by-one API
(``engine.invite``: a transaction and a message per client). No worker runs: the messages
stay in the benchmarks' Redis database, which is emptied between runs.

    .venv/bin/python -m bench.bench_mass [--clients 100000] [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench import common

os.environ["BROKER_URL"] = common.REDIS_URL

TARGET = 3.0


def run_mass(kind: str, clients: int) -> tuple[float, dict[str, float]]:
    """Invitations per second of ``mass_invite``, and where its time went (seconds)."""
    from engine import create_staff
    from engine.operations.mass import mass_invite

    with common.fresh_database(kind):
        now = common.now_utc()
        practice_id = common.make_practice(now)
        admin = create_staff(practice_id, "Ada Admin", "ada@bench.test", "admin", now=now)
        common.load_clients(practice_id, clients, now)
        common.flush_redis()
        started = time.perf_counter()
        report = mass_invite(practice_id, by=f"staff:{admin.id}", now=now)
        elapsed = time.perf_counter() - started
        if report.invited != clients or report.enqueued != clients:
            raise RuntimeError(f"mass_invite invited {report.invited} and enqueued {report.enqueued} of {clients}")
    common.flush_redis()
    return clients / elapsed, {"batches": report.batches}


def run_send_loop(n: int) -> float:
    """``advance_invitation.send(id)`` per invitation: enqueues per second."""
    from workflows.actors import advance_invitation

    common.flush_redis()
    started = time.perf_counter()
    for i in range(1, n + 1):
        advance_invitation.send(i)
    elapsed = time.perf_counter() - started
    common.flush_redis()
    return n / elapsed


def run_invite_loop(kind: str, n: int) -> float:
    """``engine.invite`` per client: invitations per second."""
    import engine

    with common.fresh_database(kind):
        now = common.now_utc()
        practice_id = common.make_practice(now)
        staff = engine.create_staff(practice_id, "Sam Staff", "sam@bench.test", "admin", now=now)
        ids = common.load_clients(practice_id, n, now)
        common.flush_redis()
        started = time.perf_counter()
        for client_id in ids:
            engine.invite(practice_id, client_id, by=f"staff:{staff.id}", now=now)
        elapsed = time.perf_counter() - started
    common.flush_redis()
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--sends", type=int, default=20_000, help="sample size of the actor.send peer")
    parser.add_argument("--invites", type=int, default=2_000, help="sample size of the engine.invite peer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--databases", default=",".join(common.DATABASES))
    args = parser.parse_args(argv)
    kinds = [k for k in args.databases.split(",") if k]

    from engine.core.logs import setup_logging
    from engine.core.runtime import boot

    setup_logging("text", level=30)
    boot()
    common.header(f"mass invitation of {args.clients:,} clients vs one actor.send per invitation")
    sends = common.Figure(f"actor.send per invitation ({args.sends:,} sends)", "/s")
    mass = {k: common.Figure(f"mass_invite ({k}, {args.clients:,} clients)", "invitations/s") for k in kinds}
    invites = {k: common.Figure(f"engine.invite per client ({k}, {args.invites:,})", "invitations/s") for k in kinds}
    for round_ in range(1, args.repeat + 1):
        sends.values.append(run_send_loop(args.sends))
        for kind in kinds:
            mass[kind].values.append(run_mass(kind, args.clients)[0])
            invites[kind].values.append(run_invite_loop(kind, args.invites))
        rates = ", ".join(f"{k}: mass {mass[k].values[-1]:,.0f}/s, invite {invites[k].values[-1]:,.0f}/s"
                          for k in kinds)
        print(f"round {round_}: send {sends.values[-1]:,.0f}/s, {rates} (load {common.load():.2f})", flush=True)
    print(sends)
    for kind in kinds:
        print(mass[kind])
        print(invites[kind])
        print("  " + common.verdict(f"{kind}: mass_invite ÷ actor.send", mass[kind].median / sends.median, TARGET))
        print(f"  {kind}: mass_invite ÷ engine.invite: {mass[kind].median / invites[kind].median:.1f}×")
    print(f"# load at the end {common.load():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
