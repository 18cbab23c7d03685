"""``invites keys``: the HTTP API's keys, one per calling system (create, list, rotate, revoke)."""

from __future__ import annotations

import argparse
from typing import Any

from engine.cli.common import add_json, emit


def _key_line(v: dict[str, Any]) -> str:
    where = f"practice {v['practice_id']}" if v["practice_id"] is not None else "platform"
    state = "revoked" if v["revoked_at"] else "live"
    return f"{v['id']:>5}  {v['prefix']}…  {v['name']:<20} {','.join(v['scopes']):<24} {where:<14} {state}"


def _shown_once(v: dict[str, Any]) -> str:
    return (f"{_key_line(v)}\n\n{v['key']}\n\nThis key is shown once: store it in the calling system's secrets now. "
            "Only its hash is kept.")


def _create(args: argparse.Namespace) -> None:
    from engine.operations.api_keys import create_key

    new = create_key(None if args.platform else args.practice, args.name, args.scope)
    emit(args, new.to_dict(), _shown_once)


def _list(args: argparse.Namespace) -> None:
    from engine.operations.api_keys import list_keys

    keys = [k.to_dict() for k in list_keys(None if args.practice == "platform" else int(args.practice))]
    emit(args, keys, lambda rows: "\n".join(_key_line(r) for r in rows) or "no keys")


def _rotate(args: argparse.Namespace) -> None:
    from engine.operations.api_keys import rotate_key

    emit(args, rotate_key(args.id).to_dict(), lambda v: _shown_once(v) + " The old key no longer works.")


def _revoke(args: argparse.Namespace) -> None:
    from engine.operations.api_keys import revoke_key

    emit(args, revoke_key(args.id).to_dict(), lambda v: f"key {v['id']} ({v['prefix']}…) revoked")


def register(sub: Any) -> None:
    """Add ``invites keys …`` to the ``invites`` parser's subcommands."""
    keys = sub.add_parser("keys", help="API keys of the systems that call the HTTP API").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    p = keys.add_parser("create", help="a key for one calling system (shown once)",
                        description="Scopes: invite (ask for invitations), staff (staff operations, acting for "
                        "X-Acting-Staff), portal (what the client portal needs), ops (queues).")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--practice", type=int, help="the practice the key acts in")
    where.add_argument("--platform", action="store_true", help="a platform key: every practice, and new ones")
    p.add_argument("--name", required=True, help="the calling system, e.g. booking: audited as system:<name>")
    p.add_argument("--scope", required=True, help="comma-separated: invite,staff,portal,ops")
    add_json(p)
    p.set_defaults(func=_create, needs_broker=False)

    p = keys.add_parser("list", help="a practice's keys (or 'platform'), never the keys themselves")
    p.add_argument("practice", help="a practice id, or 'platform'")
    add_json(p)
    p.set_defaults(func=_list, needs_broker=False)

    for name, func, text in (("rotate", _rotate, "a new key for the same system; the old one stops at once"),
                             ("revoke", _revoke, "the key stops working at once")):
        p = keys.add_parser(name, help=text)
        p.add_argument("id", type=int)
        add_json(p)
        p.set_defaults(func=func, needs_broker=False)
