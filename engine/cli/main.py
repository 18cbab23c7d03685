"""The ``invites`` command: the engine's operations for people and scripts.

Exit codes: 0 done; 1 refused by the engine (the line says why, with its code; a database
whose schema is not upgraded is one); 2 bad usage; 3 a service (database, broker) did not
answer; 141 standard output closed early (``| head``), quietly, as a shell pipeline expects.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
from collections.abc import Sequence
from typing import Any

from engine.cli import api as api_commands
from engine.cli import keys as keys_commands
from engine.cli import ops as ops_commands
from engine.cli import staff as staff_commands
from engine.cli.common import (
    OK,
    PIPE_CLOSED,
    REFUSED,
    UNAVAILABLE,
    add_by,
    add_json,
    duration_s,
    emit,
    window,
)
from engine.core.errors import InviteError, ServiceUnavailable
from engine.demo import command as demo_command

# --- handlers ------------------------------------------------------------------------------

def _db_upgrade(args: argparse.Namespace) -> None:
    from engine.core.schema import upgrade

    applied = upgrade()
    print(f"schema upgraded: applied {applied}" if applied else "schema up to date")


def _practice_create(args: argparse.Namespace) -> None:
    from engine.operations.practices import create_practice

    settings: dict[str, Any] = {"time_zone": args.time_zone, "online_payments": args.online_payments}
    for key in ("logo_url", "portal_url"):
        if getattr(args, key):
            settings[key] = getattr(args, key)
    if args.reminders is not None:
        settings["reminder_offsets_s"] = args.reminders
    if args.lifetime is not None:
        settings["lifetime_s"] = args.lifetime
    if args.window is not False:
        settings["send_window"] = args.window
    practice = create_practice(args.name, **settings)
    emit(args, {"practice_id": practice.id, "portal_url": practice.portal_url},
         lambda v: f"practice {v['practice_id']} created; portal {v['portal_url']}")


def _staff_add(args: argparse.Namespace) -> None:
    from engine.operations.practices import create_staff

    staff = create_staff(args.practice, args.name, args.email, args.role, by=args.by)
    emit(args, {"staff_id": staff.id, "actor": f"staff:{staff.id}"}, lambda v: f"staff user {v['actor']} added")


def _client_create(args: argparse.Namespace) -> None:
    from engine.operations.practices import create_client

    client = create_client(args.practice, args.name, by=args.by, email=args.email, consent=args.consent,
                           invite=args.invite, idempotency_key=args.key)
    emit(args, {"client_id": client.id, "invited": args.invite},
         lambda v: f"client {v['client_id']} created" + (" and invited" if v["invited"] else ""))


def _invite(args: argparse.Namespace) -> None:
    from engine.operations.invitations import invite

    inv = invite(args.practice, args.client, by=args.by, idempotency_key=args.key, message=args.message)
    emit(args, {"invitation_id": inv.id, "state": inv.state, "email": inv.email},
         lambda v: f"invitation {v['invitation_id']} {v['state']} for {v['email']}")


def _sign_in(args: argparse.Namespace) -> None:
    from engine.core.errors import WrongPassword
    from engine.operations.invitations import record_sign_in
    from engine.operations.password_check import check_password

    # A portal that keeps no passwords of its own checks the client's here first.
    if args.password_stdin and not check_password(args.practice, args.client, sys.stdin.read().rstrip("\n"),
                                                  by=args.by):
        raise WrongPassword("the password does not match", client_id=args.client)
    record_sign_in(args.practice, args.client, by=args.by)
    print(f"sign-in of client {args.client} recorded")


def _token_verify(args: argparse.Namespace) -> None:
    from engine.operations.invitations import verify_token

    info = verify_token(args.practice, args.token)
    emit(args, info.__dict__, lambda v: f"valid {v['purpose']} link of client {v['client_id']}, "
                                         f"until {v['expires_at'].isoformat()}")


def _token_redeem(args: argparse.Namespace) -> None:
    from engine.operations.invitations import redeem_token

    password = sys.stdin.readline().rstrip("\n")
    client_id = redeem_token(args.practice, args.token, password, by=args.by)
    print(f"password set; client {client_id} signed in")


def _status(args: argparse.Namespace) -> None:
    from engine.operations.status import portal_status

    status = portal_status(args.practice, args.client)
    emit(args, status.to_dict(), lambda v: "\n".join(f"{k:20} {v[k]}" for k in v if v[k] not in (None, "")))


def _timeline(args: argparse.Namespace) -> None:
    from engine.operations.status import timeline

    events = timeline(args.practice, invitation_id=args.invitation, client_id=args.client)
    emit(args, events, lambda rows: "\n".join(
        f"{r['at']}  {r['actor']:<14} {r['action']:<16} "
        + (f"{r['from_state'] or ''} -> {r['to_state']}" if r["to_state"] else "") for r in rows))


def _sweep(args: argparse.Namespace) -> None:
    from engine.core import clock
    from engine.core.settings import get_settings
    from workflows.actors import enqueue_steps
    from workflows.sweep import sweep

    settings = get_settings()
    result = sweep(clock.now(), enqueue=enqueue_steps, batch_size=settings.sweep_batch_size,
                   lease_s=settings.step_lease_s)
    emit(args, result.__dict__, lambda r: f"claimed {r['claimed']}, enqueued {r['enqueued']} "
                                          f"in {r['batches']} batches ({r['duration_ms']:.1f} ms)")
    if result.enqueued < result.claimed:
        raise ServiceUnavailable(f"the broker took {result.enqueued} of {result.claimed} nudges; "
                                 "the rest are sent again when their lease runs out")


def _diagram(args: argparse.Namespace) -> None:
    from workflows.invitation import diagram

    print(diagram())


def _worker(args: argparse.Namespace) -> None:
    from engine.core.runtime import check_services
    from engine.core.settings import get_settings

    # Checked here too (worker.py checks in each worker process) so that a broker that does not
    # answer is one line and exit 3, before Dramatiq starts any process.
    check_services(get_settings())
    options = list(args.dramatiq_options)
    if options[:1] == ["--"]:  # `invites worker -- --processes 1` meant the options, not a module
        options = options[1:]
    os.execv(sys.executable, [sys.executable, "-m", "dramatiq", "worker", *options])


def _scheduler(args: argparse.Namespace) -> None:
    os.execv(sys.executable, [sys.executable, "-m", "scheduler"])


# --- parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="invites",
        description="Client-portal invitations: invite clients, follow up, expire; watch the queues.",
        epilog="Settings come from the environment (DATABASE_URL, BROKER_URL, MAIL_URL, PORTAL_BASE_URL…); "
        "see the README's configuration table.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("db", help="create or upgrade the schema")
    p.add_argument("action", choices=["upgrade"])
    p.set_defaults(func=_db_upgrade, needs_broker=False, needs_schema=False)

    practice = sub.add_parser("practice", help="create a practice").add_subparsers(dest="sub", required=True)
    p = practice.add_parser("create", help="a new practice with its portal settings")
    p.add_argument("name")
    p.add_argument("--time-zone", default="UTC", help="IANA time zone (default UTC)")
    p.add_argument("--logo-url")
    p.add_argument("--portal-url", help="default: $PORTAL_BASE_URL/p/<id>")
    p.add_argument("--online-payments", action="store_true")
    p.add_argument("--reminders", type=lambda s: [duration_s(x) for x in s.split(",")],
                   help="reminder offsets after sending, e.g. 3d,7d (the default)")
    p.add_argument("--lifetime", type=duration_s, help="invitation lifetime, e.g. 14d (the default)")
    p.add_argument("--window", type=window, default=False, help="send window, e.g. 09:00-18:00 (default) or any")
    add_json(p)
    p.set_defaults(func=_practice_create, needs_broker=False)

    staff = sub.add_parser("staff", help="add staff users").add_subparsers(dest="sub", required=True)
    p = staff.add_parser("add", help="add a staff user (the first needs no --by)")
    p.add_argument("practice", type=int)
    p.add_argument("name")
    p.add_argument("email")
    p.add_argument("--role", choices=["standard", "admin"], default="standard")
    p.add_argument("--by", default=os.environ.get("INVITES_ACTOR"))
    add_json(p)
    p.set_defaults(func=_staff_add, needs_broker=False)

    client = sub.add_parser("client", help="client profiles").add_subparsers(dest="sub", required=True)
    p = client.add_parser("create", help="create a client, optionally inviting at once (P3)",
                          description="With --key, running the same command again (within 24 h) prints the "
                          "first client and creates nothing; the key with another name, email, --consent or "
                          "--invite is refused (idempotency_conflict). Consent given later: `invites consent`.")
    p.add_argument("practice", type=int)
    p.add_argument("name")
    p.add_argument("--email")
    p.add_argument("--consent", action="store_true", help="email notifications switched on (P2)")
    p.add_argument("--invite", action="store_true", help="send the portal invitation now")
    p.add_argument("--key", help="idempotency key, up to 255 characters, kept 24 h per practice: a repeat "
                   "returns the first result, other parameters are refused")
    add_by(p)
    add_json(p)
    p.set_defaults(func=_client_create)

    p = sub.add_parser("invite", help="invite a client to the portal (P4)")
    p.add_argument("practice", type=int)
    p.add_argument("client", type=int)
    p.add_argument("--key", help="idempotency key, up to 255 characters, kept 24 h per practice: a repeat "
                   "returns the first result, another client or message is refused")
    p.add_argument("--message", help="a personal message in the email (plain text)")
    add_by(p)
    add_json(p)
    p.set_defaults(func=_invite)

    p = sub.add_parser("sign-in", help="record a client's sign-in (what the portal reports)")
    p.add_argument("practice", type=int)
    p.add_argument("client", type=int)
    p.add_argument("--by", default="system:portal")
    p.add_argument("--password-stdin", action="store_true",
                   help="check the client's password (read from standard input) first; refused (exit 1) "
                   "with wrong_password when it does not match")
    p.set_defaults(func=_sign_in, needs_broker=False)

    token = sub.add_parser("token", help="portal links").add_subparsers(dest="sub", required=True)
    p = token.add_parser("verify", help="check a link's token without using it")
    p.add_argument("practice", type=int)
    p.add_argument("token")
    add_json(p)
    p.set_defaults(func=_token_verify, needs_broker=False)
    p = token.add_parser("redeem", help="use a link once: the new password is read from standard input")
    p.add_argument("practice", type=int)
    p.add_argument("token")
    p.add_argument("--by", default="system:portal")
    p.set_defaults(func=_token_redeem, needs_broker=False)

    p = sub.add_parser("status", help="a client's portal status (P8)")
    p.add_argument("practice", type=int)
    p.add_argument("client", type=int)
    add_json(p)
    p.set_defaults(func=_status, needs_broker=False)

    p = sub.add_parser("timeline", help="an invitation's (or a client's) audit timeline")
    p.add_argument("practice", type=int)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--invitation", type=int)
    group.add_argument("--client", type=int)
    add_json(p)
    p.set_defaults(func=_timeline, needs_broker=False)

    p = sub.add_parser("sweep", help="run the sweep once now (the scheduler does it on an interval)")
    add_json(p)
    p.set_defaults(func=_sweep)

    p = sub.add_parser("diagram", help="print the workflow's state diagram (Mermaid)")
    p.set_defaults(func=_diagram, needs_db=False, needs_broker=False)

    p = sub.add_parser(
        "worker", usage="invites worker [DRAMATIQ OPTIONS]", help="run Dramatiq worker processes (`dramatiq worker`)",
        description="Run `dramatiq worker [DRAMATIQ OPTIONS]`: every option of `dramatiq --help` is passed on, "
        "e.g. `invites worker --processes 2 --threads 8` (or -p 2 -t 8). Exits 3 at once when the database or "
        "the broker does not answer, 1 when the schema is not upgraded; once running, it rides out outages.",
    )
    p.set_defaults(func=_worker, needs_db=False, needs_broker=False, passes_options=True)
    p = sub.add_parser(
        "scheduler", help="run the scheduler (the periodic sweep), as `python scheduler.py`",
        description="Run the periodic sweep until SIGTERM or Ctrl-C. Exits 3 at once when the database or the "
        "broker does not answer, 1 when the schema is not upgraded; once running, it rides out outages.",
    )
    p.set_defaults(func=_scheduler, needs_db=False, needs_broker=False)

    # Command groups that live in their own modules: staff operations, ops, the demo, the API, its keys.
    for register in (staff_commands.register, ops_commands.register, demo_command.register,
                     api_commands.register, keys_commands.register):
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "passes_options", False):
        args.dramatiq_options = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if getattr(args, "needs_db", True):
            from engine.core.db import connection
            from engine.core.runtime import boot, require_schema

            boot(with_broker=getattr(args, "needs_broker", True))
            with connection():
                if getattr(args, "needs_schema", True):
                    require_schema()
                args.func(args)
        else:
            args.func(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away is handled below
    except BrokenPipeError as exc:
        if not _stdout_closed():
            return _unavailable(exc)
        # Quiet, as `cat` or `ls` in a pipeline; the interpreter's own flush at exit would
        # complain again, so standard output now goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return PIPE_CLOSED
    except ServiceUnavailable as exc:
        print(f"invites: a service did not answer: {exc.message}", file=sys.stderr)
        return UNAVAILABLE
    except InviteError as exc:
        print(f"invites: refused ({exc.code}): {exc.message}", file=sys.stderr)
        return REFUSED
    except (ConnectionError, OSError) as exc:
        return _unavailable(exc)
    except Exception as exc:  # noqa: BLE001 - peewee/redis errors: one line, not a traceback
        if type(exc).__module__.split(".")[0] in ("peewee", "redis", "psycopg2", "dramatiq", "pika", "sqlite3"):
            return _unavailable(exc)
        raise
    return OK


def _unavailable(exc: BaseException) -> int:
    print(f"invites: a service did not answer: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
    return UNAVAILABLE


def _stdout_closed() -> bool:
    """Whether the reader of our standard output has gone (a pipe without reader polls as an error).

    Library sockets wrap their broken pipes (Redis, psycopg2, pika), but this tells for sure
    that the BrokenPipeError was ours to write and not a service's.
    """
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll(), or stdout is no file: assume ours
        return True


if __name__ == "__main__":
    raise SystemExit(main())
