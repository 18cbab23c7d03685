"""``invites ops``: see and steer the queues (docs/operations.md is the guide).

``engine.cli.main`` calls ``register(subparsers)``. ``status`` and ``dead-letters list`` print text,
or JSON with ``--json``; ``serve`` runs the status page until Ctrl-C. ``status`` with the broker
down still prints what the database says, then exits 3.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from engine.cli.common import add_json, emit
from engine.core.errors import ServiceUnavailable


def _status(args: argparse.Namespace) -> None:
    from engine.core import clock, runtime
    from engine.core.settings import get_settings
    from engine.monitoring import figures as ops

    status = ops.collect(clock.now(), broker=runtime.broker(), settings=get_settings())
    emit(args, status.to_dict(), status_text)
    if status.broker_error:
        # The report is still worth printing (the database's figures); the exit code tells a
        # cron check or a script that a service did not answer.
        raise ServiceUnavailable(f"the broker ({status.broker_error})")


def status_text(v: dict[str, Any]) -> str:
    """``invites ops status`` for people."""
    from engine.monitoring.figures import human_duration

    lines = [f"Portal Invites at {v['at']} (broker {v['broker']})"]
    if v["problems"]:
        lines += ["Needs attention:"] + [f"  - {p}" for p in v["problems"]]
    else:
        lines.append("All clear: invitations are flowing.")
    lines.append("")
    if v["broker_error"]:
        lines.append(f"Queues: the broker did not answer ({v['broker_error']})")
    else:
        lines.append(f"{'Queue':<14}{'ready':>8}{'delayed':>9}{'in flight':>11}{'orphaned':>10}{'dead':>7}")
        for q in v["queues"]:
            cells = [q["ready"], q["delayed"], q["in_flight"], q["orphaned"], q["dead"]]
            shown = ["-" if c is None else str(c) for c in cells]
            lines.append(f"{q['queue']:<14}{shown[0]:>8}{shown[1]:>9}{shown[2]:>11}{shown[3]:>10}{shown[4]:>7}")
    lines.append("")
    lines.append("Invitations: " + ", ".join(f"{state} {n}" for state, n in v["invitations"].items()))
    backlog = v["backlog"]
    lines.append(f"Due backlog: {backlog['due']} (oldest waiting {human_duration(backlog['oldest_age_s'])})")
    failures = v["failures"]
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(failures["failed"].items()))
    lines.append(
        f"Failed in the last hour: {failures['total_failed']} for good"
        + (f" ({by_kind})" if by_kind else "")
        + f", {sum(failures['retrying'].values())} being retried"
    )
    workers = v["workers"]
    lines.append(
        f"Workers: {len(workers)} alive ({sum(w.get('threads', 0) for w in workers)} threads)"
        + "".join(
            f"\n  {w['host']}:{w['pid']} processed {w['processed']}, failed {w['failed']}, "
            f"running {w['in_progress']}, last beat {w['last_beat']}"
            for w in workers
        )
    )
    if not v["schedulers"]:
        lines.append("Scheduler: no heartbeat")
    for s in v["schedulers"]:
        sweep = s.get("last_sweep") or {}
        lines.append(
            f"Scheduler: alive at {s['host']}:{s['pid']}, last sweep {s['last_beat']}: "
            f"{sweep.get('duration_ms')} ms, claimed {sweep.get('claimed')} in {sweep.get('batches')} batches"
        )
    return "\n".join(lines)


def _dead_list(args: argparse.Namespace) -> None:
    from engine.core import runtime
    from engine.core.clock import SystemClock
    from engine.monitoring import deadletters

    letters = [d.to_dict() for d in deadletters.list_dead(runtime.broker(), now=SystemClock().now())]
    emit(args, letters, _dead_text)


def _dead_text(letters: list[dict[str, Any]]) -> str:
    from engine.monitoring.figures import human_duration

    if not letters:
        return "No dead letters."
    lines = [f"{'ID':<38}{'QUEUE':<13}{'STEP':<22}{'AGE':>8}  {'TRIES':>5}  ARGS  ERROR"]
    for d in letters:
        lines.append(
            f"{d['id']:<38}{d['queue']:<13}{d['actor']:<22}{human_duration(d['age_s']):>8}  {d['retries'] + 1:>5}  "
            f"{json.dumps(d['args'])[:60]}  {d['error'] or '(no traceback kept)'}"
        )
    lines.append(f"{len(letters)} dead letters; `invites ops dead-letters requeue ID` (or --all) runs them again.")
    return "\n".join(lines)


def _dead_requeue(args: argparse.Namespace) -> None:
    from engine.core import runtime
    from engine.core.clock import SystemClock
    from engine.monitoring import deadletters

    broker, now = runtime.broker(), SystemClock().now()
    if args.all:
        count = deadletters.requeue_all(broker, now=now)
        print(f"requeued {count} dead letters")
        return
    letter = deadletters.requeue(broker, args.id, now=now)
    if letter is None:
        print(f"dead letter {args.id} was requeued by someone else meanwhile")
    else:
        print(f"requeued {letter.actor}{tuple(letter.args)!r} on {letter.queue}")


def _dead_purge(args: argparse.Namespace) -> None:
    from engine.core import runtime
    from engine.monitoring import deadletters

    print(f"purged {deadletters.purge(runtime.broker())} dead letters")


def _serve(args: argparse.Namespace) -> None:
    from engine.core import clock, runtime
    from engine.core.settings import get_settings
    from engine.web.statuspage import StatusApp, make_server

    app = StatusApp(broker=runtime.broker, settings=get_settings, now=clock.now)
    server = make_server(app, args.host, args.port)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    print(f"status page on http://{host}:{port}/ (/api/status, /metrics); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(sub: Any) -> None:
    """Add ``invites ops …`` to the ``invites`` command."""
    ops = sub.add_parser("ops", help="see and steer the queues: status, dead letters, status page").add_subparsers(
        dest="sub", required=True, metavar="OPS_COMMAND"
    )
    p = ops.add_parser(
        "status",
        help="queues, invitations by state, due backlog, failures, heartbeats",
        description="Everything an operator checks first. `Needs attention` lists what is wrong; "
        "docs/operations.md says what each figure means and what to do.",
    )
    add_json(p)
    p.set_defaults(func=_status)

    dead = ops.add_parser("dead-letters", help="messages Dramatiq gave up on (Redis broker)").add_subparsers(
        dest="dead", required=True, metavar="ACTION"
    )
    p = dead.add_parser("list", help="each dead letter with its step, arguments, error and age")
    add_json(p)
    p.set_defaults(func=_dead_list)
    p = dead.add_parser(
        "requeue",
        help="run dead letters again (safe: a step already done does nothing)",
        description="Put a dead letter (or all) back on its queue with a fresh retry count. The step re-reads "
        "the invitation, so a requeued message never sends an email twice.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="the dead letter's ID (or its message id) from `list`")
    which.add_argument("--all", action="store_true", help="every dead letter")
    p.set_defaults(func=_dead_requeue)
    p = dead.add_parser("purge", help="delete every dead letter")
    p.set_defaults(func=_dead_purge)

    p = ops.add_parser("serve", help="serve the read-only status page (HTML, /api/status, /metrics)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.set_defaults(func=_serve)
