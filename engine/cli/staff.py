"""``invites`` commands for what staff do with portal access (docs/staff.md has the guide).

``engine.cli.main`` calls ``register(subparsers)``; each handler calls one function of the engine's
API and prints its result as text, or as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from engine.cli.common import add_by, add_json, emit

_SWITCH = {"on": True, "off": False}


# --- handlers ----------------------------------------------------------------------------------

def _resend(args: argparse.Namespace) -> None:
    from engine.operations.access import resend

    inv = resend(args.practice, args.client, by=args.by, message=args.message)
    emit(args, {"invitation_id": inv.id, "state": inv.state, "email": inv.email},
         lambda v: f"invitation {v['invitation_id']} {v['state']} for {v['email']}; earlier links no longer work")


def _disable(args: argparse.Namespace) -> None:
    from engine.operations.access import disable

    status = disable(args.practice, args.client, by=args.by)
    emit(args, status.to_dict(), lambda v: f"portal access of client {v['client_id']} disabled "
                                           "(invite again to re-enable)")


def _share(args: argparse.Namespace) -> None:
    from engine.operations.sharing import share_documents

    result = share_documents(args.practice, args.client, by=args.by, documents=args.documents,
                             message=args.message)
    texts = {"invited": "invited with the share (the email says documents are waiting)",
             "already_invited": "already invited; the reminders now mention the documents",
             "has_access": "has portal access already; no invitation sent"}
    emit(args, result.to_dict(), lambda v: f"client {v['client_id']}: {texts[v['outcome']]}")


def _email_text(v: dict[str, Any]) -> str:
    line = f"{v['changed']} email of client {v['client_id']}: {v['previous_email']} -> {v['new_email']}"
    if v["portal_action"] == "none" and v["previous_email"] == v["portal_email"] and v["changed"] == "portal":
        return line + " (unchanged)"
    line += f"\nportal access uses {v['portal_email']}"
    if v["access_affected"]:
        line += "\nportal access was affected"
    if v["invitation_id"]:
        line += f"; new invitation {v['invitation_id']} sent to {v['portal_email']}"
    return line


def _portal_email(args: argparse.Namespace) -> None:
    from engine.operations.access import change_portal_email

    change = change_portal_email(args.practice, args.client, args.email, by=args.by)
    emit(args, change.to_dict(), _email_text)


def _primary_email(args: argparse.Namespace) -> None:
    from engine.operations.access import change_primary_email

    action = "disable_and_resend" if args.disable_and_resend else "keep"
    change = change_primary_email(args.practice, args.client, args.email, by=args.by, portal_action=action)
    emit(args, change.to_dict(), _email_text)


def _consent(args: argparse.Namespace) -> None:
    from engine.operations.practices import set_email_consent

    change = set_email_consent(args.practice, args.client, _SWITCH[args.switch], by=args.by)

    def text(v: dict[str, Any]) -> str:
        state = "given" if v["email_consent"] else "withdrawn"
        if not v["changed"]:
            return f"email consent of client {v['client_id']} was {state} already; nothing changed"
        if v["email_consent"]:
            return f"email consent of client {v['client_id']} given; invite them to send the invitation"
        line = f"email consent of client {v['client_id']} withdrawn: no more email to them"
        if v["revoked_invitation_id"]:
            line += f"; invitation {v['revoked_invitation_id']} revoked (no reminders, its links no longer work)"
        return line

    emit(args, change.to_dict(), text)


def _permissions(args: argparse.Namespace) -> None:
    from engine.operations.access import effective_permissions, permissions, set_permissions

    flags = (args.appointments, args.messaging, args.billing, args.pay)
    asked = [None if value is None else _SWITCH[value] for value in flags]
    stored = (
        set_permissions(args.practice, args.client, by=args.by, can_request_appointments=asked[0],
                        can_message=asked[1], can_view_billing=asked[2], can_pay=asked[3])
        if any(value is not None for value in asked)
        else permissions(args.practice, args.client, by=args.by)
    )
    effective = effective_permissions(args.practice, args.client, by=args.by)
    value = {"client_id": args.client, "permissions": stored.to_dict(), "effective": effective.to_dict()}
    emit(args, value, lambda v: "\n".join(
        f"{name:26} {'on' if on else 'off':4} (effective: {'on' if v['effective'][name] else 'off'})"
        for name, on in v["permissions"].items()))


def _reset_password(args: argparse.Namespace) -> None:
    from engine.operations.password_resets import request_password_reset

    request = request_password_reset(args.practice, args.client, by=args.by)
    emit(args, request.to_dict(), lambda v: f"reset email queued for {v['to_email']}; its link works "
                                            f"{v['link_ttl_s'] // 60} minutes, once")


def _portal_switch(args: argparse.Namespace) -> None:
    from engine.operations.portal import set_portal_enabled

    result = set_portal_enabled(args.practice, args.sub == "on", by=args.by)

    def text(v: dict[str, Any]) -> str:
        state = "on" if v["portal_enabled"] else "off"
        if not v["changed"]:
            return f"the portal was already {state}"
        if v["portal_enabled"]:
            return (f"the portal is on again after {v['paused_s']} s; "
                    f"{v['shifted_invitations']} invitations' follow-ups moved later by as much")
        return "the portal is off: no sign-in, no emails; follow-ups wait until it is on again"

    emit(args, result.to_dict(), text)


def _portal_link(args: argparse.Namespace) -> None:
    from engine.operations.portal import portal_link

    link = portal_link(args.practice, by=args.by, label=args.label)
    if args.sub == "widget" and not args.json:
        print(link.widget_html)
        return
    emit(args, link.to_dict(), lambda v: f"{v['portal_url']}\n\nwebsite widget:\n{v['widget_html']}")


class ProgressBar:
    """A one-line progress bar on stderr, redrawn in place: ``[#####.....] 500/1000 clients``."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.width if total <= 0 else min(self.width, self.width * done // total)
        percent = 100 if total <= 0 else min(100, 100 * done // total)
        self.stream.write(f"\rinviting [{'#' * filled}{'.' * (self.width - filled)}] {percent:3d}% "
                          f"{done}/{total} clients")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _mass_invite(args: argparse.Namespace) -> None:
    from engine.operations.mass import mass_invite

    bar = None if args.no_progress else ProgressBar()
    try:
        report = mass_invite(args.practice, by=args.by, batch_size=args.batch_size, progress=bar,
                             writers=args.writers)
    finally:
        if bar is not None:
            bar.close()

    def text(v: dict[str, Any]) -> str:
        skipped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in v["skipped"].items() if n)
        return (f"invited {v['invited']} of {v['clients']} clients in {v['batches']} batches "
                f"({v['duration_ms'] / 1000:.1f} s); skipped: {skipped or 'none'}")

    emit(args, report.to_dict(), text)


def _view(args: argparse.Namespace) -> None:
    from engine.operations import views

    show = {"attention": views.needs_attention, "pending": views.pending, "scheduled": views.scheduled}
    page = show[args.sub](args.practice, by=args.by, limit=args.limit, offset=args.offset)
    emit(args, page.to_dict(), _table)


_COLUMNS = {
    "needs_attention": ("reason", "client_id", "client_name", "email", "at", "last_error"),
    "pending": ("client_id", "client_name", "email", "state", "days_waiting", "reminders_sent", "expires_at"),
    "scheduled": ("client_id", "client_name", "next_step", "reminder_number", "due_at", "due_local"),
}


def _table(page: dict[str, Any]) -> str:
    columns = _COLUMNS[page["view"]]
    rows = [[("" if item[c] is None else str(item[c])) for c in columns] for item in page["items"]]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    shown = f"{page['offset'] + 1}-{page['offset'] + len(rows)}" if rows else "none"
    lines.append(f"({shown} of {page['total']})")
    return "\n".join(lines)


# --- parser ------------------------------------------------------------------------------------

def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("practice", type=int)
    parser.add_argument("client", type=int)


def register(sub: Any) -> None:
    """Add the staff commands to the ``invites`` parser's subcommands."""
    p = sub.add_parser("resend", help="resend a client's invitation, with a new link (P11)",
                       description="Revoke the client's earlier links and send a new invitation with a full "
                       "lifetime. Refused after the first sign-in: share the portal link instead (P12).")
    _client_args(p)
    p.add_argument("--message", help="a personal message in the email: plain text, at most 2000 characters; "
                   "line breaks are kept, a tab or any other control character is refused")
    add_by(p)
    add_json(p)
    p.set_defaults(func=_resend)

    p = sub.add_parser("disable", help="disable a client's portal access (P14)",
                       description="Links stop working and follow-ups stop at once. Invite again to re-enable.")
    _client_args(p)
    add_by(p)
    add_json(p)
    p.set_defaults(func=_disable, needs_broker=False)

    p = sub.add_parser("share", help="record a document share; invites a client without access (P5)")
    _client_args(p)
    p.add_argument("--documents", type=int, default=1, help="how many documents were shared (default 1)")
    p.add_argument("--message", help="a personal message for the invitation (plain text)")
    add_by(p)
    add_json(p)
    p.set_defaults(func=_share)

    p = sub.add_parser("portal-email", help="change the email used for portal access alone (P9)",
                       description="Pending links die; a client waiting on an invitation gets a new one at "
                       "the new address. The primary email is not touched.")
    _client_args(p)
    p.add_argument("email")
    add_by(p)
    add_json(p)
    p.set_defaults(func=_portal_email)

    p = sub.add_parser("primary-email", help="change a client's primary email (P10)",
                       description="Says whether portal access was affected. portal_action 'keep' (the "
                       "default): portal access keeps the address it used. portal_action "
                       "'disable_and_resend' (--disable-and-resend): the old access (live invitation, links, "
                       "password) is revoked and an invitation goes to the new address, in one step.")
    _client_args(p)
    p.add_argument("email")
    p.add_argument("--disable-and-resend", action="store_true",
                   help="portal_action 'disable_and_resend' instead of 'keep': revoke the old access and invite "
                   "the new address, in one step")
    add_by(p)
    add_json(p)
    p.set_defaults(func=_primary_email)

    p = sub.add_parser("consent", help="give or withdraw a client's email consent (P2)",
                       description="'on': the client may be emailed; nothing is sent until you invite them. "
                       "'off': no more email to the client; a pending invitation is revoked (no reminders, its "
                       "links stop working) and an unsent password-reset email is dropped. A client who has "
                       "signed in keeps portal access.")
    _client_args(p)
    p.add_argument("switch", choices=["on", "off"], help="on: consent given; off: consent withdrawn")
    add_by(p)
    add_json(p)
    p.set_defaults(func=_consent, needs_broker=False)

    p = sub.add_parser("permissions", help="show or set a client's portal permissions (P13)",
                       description="Without options, shows the permissions and what is in effect now. Paying "
                       "needs billing on and the practice's online payments.")
    _client_args(p)
    for flag, what in (("--appointments", "request appointments online"), ("--messaging", "secure messaging"),
                       ("--billing", "view billing documents"), ("--pay", "pay the outstanding balance")):
        p.add_argument(flag, choices=["on", "off"], help=what)
    add_by(p)
    add_json(p)
    p.set_defaults(func=_permissions, needs_broker=False)

    p = sub.add_parser("reset-password", help="email a client a password-reset link (P7)")
    _client_args(p)
    add_by(p)
    add_json(p)
    p.set_defaults(func=_reset_password)

    portal = sub.add_parser("portal", help="the practice's portal: on/off, link, website widget (P15, P16)")
    actions = portal.add_subparsers(dest="sub", required=True, metavar="ACTION")
    for name, help_text in (("on", "switch the portal on; paused follow-ups resume, moved by the pause"),
                            ("off", "switch the portal off for everyone (admin)")):
        p = actions.add_parser(name, help=help_text)
        p.add_argument("practice", type=int)
        add_by(p)
        add_json(p)
        p.set_defaults(func=_portal_switch, needs_broker=False)
    for name, help_text in (("link", "the portal URL (share it with signed-in clients) and the widget"),
                            ("widget", "the HTML snippet that puts the portal on the practice's website")):
        p = actions.add_parser(name, help=help_text)
        p.add_argument("practice", type=int)
        p.add_argument("--label", help="the button's text (default 'Client portal')")
        add_by(p)
        add_json(p)
        p.set_defaults(func=_portal_link, needs_broker=False)

    p = sub.add_parser("mass-invite", help="invite every client who can be and is not yet (admin)",
                       description="Skips clients without email, without consent, already active (invited "
                       "or signed in) and disabled, and says how many. Safe to run again.")
    p.add_argument("practice", type=int)
    p.add_argument("--batch-size", type=int, default=1000, help="clients per batch (default 1000)")
    p.add_argument("--writers", type=int, default=None,
                   help="batches written at once (default 2 on PostgreSQL, 1 on SQLite)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_by(p)
    add_json(p)
    p.set_defaults(func=_mass_invite)

    view = sub.add_parser("view", help="staff views: attention, pending, scheduled")
    kinds = view.add_subparsers(dest="sub", required=True, metavar="VIEW")
    for name, help_text in (("attention", "failed deliveries and invitations that expired unused"),
                            ("pending", "invited, not signed in: days waiting, reminders sent"),
                            ("scheduled", "the next follow-ups and when they go")):
        p = kinds.add_parser(name, help=help_text)
        p.add_argument("practice", type=int)
        p.add_argument("--limit", type=int, default=100, help="rows per page (default 100, at most 1000)")
        p.add_argument("--offset", type=int, default=0)
        add_by(p)
        add_json(p)
        p.set_defaults(func=_view, needs_broker=False)
