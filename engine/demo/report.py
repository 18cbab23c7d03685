"""The demo's closing summary: what ended how, the emails, one timeline, and what to try next."""

from __future__ import annotations

import email.policy
import sys
from collections import Counter
from datetime import datetime
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING

from engine.demo.view import Screen, redact, show

if TYPE_CHECKING:
    from engine.demo.story import Player


def closing_summary(
    screen: Screen,
    *,
    practice_id: int,
    players: list[Player],
    started_at: datetime,
    elapsed_s: float,
    folder: Path,
    expected: dict[str, tuple[str, int]],
    actor: str,
) -> int:
    """Print the summary; returns 0 when every client ended as the story says, else 1."""
    import engine
    from engine.core.models import OutboxEmail
    from engine.core.settings import get_settings
    from engine.mail import FileTransport

    invited = [p for p in players if p.invitation_id is not None]
    states = Counter(p.state for p in invited)
    screen.say("")
    screen.say(f"All {len(invited)} invitations have ended, after {elapsed_s:.0f} s: "
               + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ".")

    outbox = FileTransport(folder / "outbox")
    rows = list(OutboxEmail.select().where(OutboxEmail.status == "sent").order_by(OutboxEmail.sent_at, OutboxEmail.id))
    screen.say("")
    screen.say(f"The {len(rows)} emails in the outbox, one .eml file each in {show(outbox.folder)}/ "
               "(any mail client opens them):")
    for row in rows:
        path = outbox.path_for(row.message_id)
        with open(path, "rb") as handle:
            subject = BytesParser(policy=email.policy.default).parse(handle, headersonly=True)["Subject"]
        screen.say(f"  t+{(row.sent_at - started_at).total_seconds():4.1f}s  {row.to_email:<20} {subject}")
    signed_in = {p.who.email: engine.portal_status(practice_id, p.client_id).first_signed_in_at for p in invited}
    late = [r for r in rows if (when := signed_in.get(r.to_email)) is not None and r.sent_at > when]
    screen.say(f"  Emails sent to a client after their sign-in: {len(late)}.")

    star = next((p for p in invited if p.who.then == "redeem"), invited[0])
    screen.say("")
    screen.say(f"Timeline of {star.who.name}'s invitation (engine.timeline, or "
               f"`invites timeline {practice_id} --invitation {star.invitation_id}`):")
    for event in engine.timeline(practice_id, invitation_id=star.invitation_id):
        at = (datetime.fromisoformat(event["at"]) - started_at).total_seconds()
        move = f"{event['from_state'] or ''} -> {event['to_state']}" if event["to_state"] else ""
        screen.say(f"  t+{at:4.1f}s  {event['actor']:<14} {event['action']:<14} {move}".rstrip())

    _try_next(screen, practice_id, players, folder, redact(get_settings().broker_url), actor)

    problems = [
        f"{p.who.name}: {p.state} with {p.reminders_sent} reminders, expected {want[0]} with {want[1]}"
        for p in invited
        if (p.state, p.reminders_sent) != (want := expected[p.who.then])
    ] + [f"{r.to_email} got {r.kind} {r.message_id} after signing in" for r in late]
    if problems:
        screen.say("")
        screen.say("invites demo: not what the story says should happen:")
        for line in problems:
            screen.say(f"  {line}")
        return 1
    return 0


def _try_next(screen: Screen, practice_id: int, players: list[Player], folder: Path, broker_url: str,
              actor: str) -> None:
    cli = Path(sys.executable).with_name("invites")
    invites = show(cli) if cli.exists() else "invites"
    marcus = next((p for p in players if p.who.then == "redeem"), players[0])
    silent = next((p for p in players if p.who.then == "wait"), players[0])
    screen.say("")
    screen.say("Try it yourself on the same database and outbox (after the demo has stopped its own processes):")
    database, outbox = show(folder / "invites.db"), show(folder / "outbox")
    screen.say(f"  export DATABASE_URL=sqlite:///{database} MAIL_URL=file://{outbox}")
    screen.say(f"  export BROKER_URL={broker_url} SWEEP_INTERVAL_S=1 INVITES_ACTOR={actor}")
    commands = [
        (f"{invites} status {practice_id} {marcus.client_id}", f"{marcus.who.name}'s portal status"),
        (f"{invites} timeline {practice_id} --client {silent.client_id}",
         f"everything that happened to {silent.who.name}"),
        (f"{invites} worker &", "a worker and a scheduler of your own"),
        (f"{invites} scheduler &", "(stop them with: kill %1 %2)"),
        (f'{invites} client create {practice_id} "Ann Other" --email ann@example.com --consent --invite', ""),
        (f"{invites} --help", "every command"),
    ]
    width = max(len(c) for c, why in commands if why) + 2
    for command, why in commands:
        screen.say(f"  {command:<{width}}# {why}" if why else f"  {command}")
