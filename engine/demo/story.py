"""The demo's story: a practice, six clients on different paths, and watching them play out.

Everything goes through the engine's Python API, as another system would call it; the links a
client uses are read back from the ``.eml`` files in the outbox, as a mail app would show them.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from engine.demo.procs import StopSignals, Supervisor, tail
from engine.demo.view import FINAL_STATES, Row, Screen, next_step_text, show

PRACTICE_NAME = "Happy Paws Veterinary Clinic"
LOGO_URL = "https://placehold.co/160x160/png?text=Happy+Paws"
TIME_ZONE = "Europe/London"
#: The compressed schedule: seconds where the defaults have days (3 d, 7 d, 14 d).
REMINDERS_S = [8, 16]
LIFETIME_S = 30
#: How often the demo looks at the invitations and redraws (events show up within this).
TICK_S = 0.5
#: The demo gives up (and says why) if the invitations have not all ended by then.
GIVE_UP_AFTER_S = 120
PASSWORD = "a demo password, not a real one"


@dataclass(frozen=True)
class Character:
    """A demo client and what they will do."""

    name: str
    email: str
    consent: bool = True
    invite_on_create: bool = False  # P3; otherwise created first and invited after (P4)
    then: str = "wait"  # wait (reminders, then expiry) | sign_in | redeem


CAST = (
    Character("Olivia Bennett", "olivia@example.com", invite_on_create=True),
    Character("Marcus Chen", "marcus@example.com", then="redeem"),
    Character("Priya Sharma", "priya@example.com", then="sign_in"),
    Character("Tom Walsh", "tom@example.com"),
    Character("Grace Okafor", "grace@example.com"),
    Character("Daniel Novak", "daniel@example.com", consent=False),
)

_PLANS = {
    "wait": "will not react: two reminders, then expiry",
    "sign_in": "will sign in as soon as the invitation is out",
    "redeem": "will set a password with the first reminder's link",
}
#: How each path must end (state, reminders received) for the demo to count as a success.
EXPECTED = {"wait": ("expired", len(REMINDERS_S)), "sign_in": ("signed_in", 0), "redeem": ("signed_in", 1)}


@dataclass
class Player:
    """A character once created: ids, what the demo last saw, and whether it has played its part."""

    who: Character
    client_id: int
    invitation_id: int | None = None
    acted: bool = False
    state: str = "queued"
    reminders_sent: int = 0


@dataclass
class Played:
    """How a game ended, for the closing summary (``engine.demo.report``)."""

    practice_id: int
    actor: str
    players: list[Player]
    started_at: datetime
    elapsed_s: float


def play(folder: Path, screen: Screen, supervisor: Supervisor, signals: StopSignals) -> Played | int:
    """Seed the practice and watch until every invitation has ended; 1 if the game broke off."""
    from engine.core import clock

    started_at, t0 = clock.now(), time.monotonic()
    practice_id, actor, players = _seed(screen)
    title = f"{PRACTICE_NAME}: portal invitations"
    while True:
        elapsed = time.monotonic() - t0
        signals.check()
        if death := supervisor.death_notice():
            for line in death:
                screen.say(line)
            return 1
        rows = _observe(practice_id, players, screen, elapsed, folder)
        screen.table(title, rows, _outbox_line(folder), elapsed_s=elapsed)
        if all(p.state in FINAL_STATES for p in players if p.invitation_id):
            break
        if elapsed > GIVE_UP_AFTER_S:
            screen.say(f"invites demo: the invitations had not all ended after {GIVE_UP_AFTER_S} s.")
            for child in supervisor.children:
                screen.say(f"  Last lines of {show(child.log_path)}:")
                for line in tail(child.log_path, 8):
                    screen.say(f"    {line}")
            return 1
        time.sleep(max(0.0, TICK_S - (time.monotonic() - t0 - elapsed)))
    screen.end()
    return Played(practice_id, actor, players, started_at, time.monotonic() - t0)


def _seed(screen: Screen) -> tuple[int, str, list[Player]]:
    """The practice, its staff and its clients, through the Python API as any caller would."""
    import engine

    practice = engine.create_practice(PRACTICE_NAME, logo_url=LOGO_URL, time_zone=TIME_ZONE,
                                      reminder_offsets_s=REMINDERS_S, lifetime_s=LIFETIME_S, send_window=None)
    admin = engine.create_staff(practice.id, "Ada Admin", "ada@happypaws.example", "admin")
    staff = engine.create_staff(practice.id, "Sam Staff", "sam@happypaws.example", "standard",
                                by=f"staff:{admin.id}")
    by = f"staff:{staff.id}"
    screen.say("")
    screen.say(f"Practice {practice.id} created, with an admin (staff:{admin.id}) and a standard user ({by}) "
               f"who does the inviting.")
    players = []
    for who in CAST:
        client = engine.create_client(practice.id, who.name, by=by, email=who.email, consent=who.consent,
                                      invite=who.invite_on_create)
        player = Player(who, client.id)
        players.append(player)
        if who.invite_on_create:
            line = "created and invited in one call (P3)"
        else:
            try:
                engine.invite(practice.id, client.id, by=by)
                line = "created, then invited (P4)"
            except engine.InviteError as exc:
                player.state = "refused"
                screen.say(f"  {who.name:<15} created without email consent; the invitation is refused:")
                screen.say(f"  {'':<15} {exc.code}: {exc.message}")
                continue
        player.invitation_id = engine.portal_status(practice.id, client.id).invitation_id
        screen.say(f"  {who.name:<15} {line}; {_PLANS[who.then]}")
    screen.say("")
    return practice.id, by, players


def _observe(practice_id: int, players: list[Player], screen: Screen, elapsed: float, folder: Path) -> list[Row]:
    """Read every invitation, tell what changed, and play each client's part when it is time."""
    import engine
    from engine.core import clock

    now = clock.now()
    rows = []
    for p in players:
        if p.invitation_id is None:
            rows.append(Row(p.who.name, p.who.email, "refused", 0, len(REMINDERS_S), "-"))
            continue
        status = engine.portal_status(practice_id, p.client_id)
        state, sent = status.invitation_state or "queued", status.reminders_sent
        if sent > p.reminders_sent:
            _event(screen, elapsed, p, f"reminder {sent} sent to {p.who.email}")
        if state != p.state and state == "sent":
            _event(screen, elapsed, p, f"invitation sent to {p.who.email}")
        elif state != p.state and state in ("expired", "failed", "revoked"):
            _event(screen, elapsed, p, state + (f": {status.last_error}" if status.last_error else ""))
        p.state, p.reminders_sent = state, sent
        if not p.acted:
            _act(practice_id, p, screen, elapsed, folder)
        due_in = (status.next_action_at - now).total_seconds() if status.next_action_at else None
        rows.append(Row(p.who.name, p.who.email, p.state, p.reminders_sent, len(REMINDERS_S),
                        next_step_text(p.state, p.reminders_sent, len(REMINDERS_S), due_in)))
    return rows


def _act(practice_id: int, p: Player, screen: Screen, elapsed: float, folder: Path) -> None:
    import engine

    if p.who.then == "sign_in" and p.state == "sent":
        p.acted = True
        engine.record_sign_in(practice_id, p.client_id)  # what the portal reports
        p.state = engine.portal_status(practice_id, p.client_id).invitation_state or p.state
        _event(screen, elapsed, p, f"signed in (engine.record_sign_in) -> {p.state}; no reminder will follow")
    elif p.who.then == "redeem" and p.reminders_sent >= 1 and p.state == "reminded":
        p.acted = True
        path = email_file(folder, p.invitation_id, "reminder")
        try:
            engine.redeem_token(practice_id, set_password_token(path), PASSWORD)
        except engine.InviteError as exc:
            _event(screen, elapsed, p, f"the link in {path.name} was refused ({exc.code}): {exc.message}")
            return
        p.state = engine.portal_status(practice_id, p.client_id).invitation_state or p.state
        _event(screen, elapsed, p, f"set a password via reminder 1's link (engine.redeem_token) -> {p.state}")
        screen.say(f"{'':<25}read from {path.parent.name}/{path.name}; no more reminders")


def _event(screen: Screen, elapsed: float, p: Player, text: str) -> None:
    screen.say(f"t+{elapsed:4.1f}s  {p.who.name:<15} {text}")


def email_file(folder: Path, invitation_id: int | None, kind: str) -> Path:
    """The ``.eml`` file of an invitation's latest email of ``kind``, found through its outbox row."""
    from engine.core.models import OutboxEmail
    from engine.mail import FileTransport

    row = (OutboxEmail.select().where((OutboxEmail.invitation == invitation_id) & (OutboxEmail.kind == kind)
                                      & (OutboxEmail.status == "sent"))
           .order_by(OutboxEmail.id.desc()).first())
    if row is None:
        raise FileNotFoundError(f"no {kind} email of invitation {invitation_id} in the outbox")
    return FileTransport(folder / "outbox").path_for(row.message_id)


def set_password_token(path: Path) -> str:
    """The token of the set-password link in an ``.eml`` file, read as a client's mail app would."""
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    body = message.get_body(preferencelist=("plain",))  # type: ignore[attr-defined]
    for url in re.findall(r"https?://\S+", body.get_content() if body else ""):
        if "/set-password" in url:
            tokens = parse_qs(urlsplit(url).query).get("token")
            if tokens:
                return tokens[0]
    raise ValueError(f"no set-password link in {path.name}")


def _outbox_line(folder: Path) -> str:
    from engine.core.models import OutboxEmail

    counts = {"invitation": 0, "reminder": 0}
    for row in OutboxEmail.select(OutboxEmail.kind).where(OutboxEmail.status == "sent"):
        counts[row.kind] = counts.get(row.kind, 0) + 1
    parts = ", ".join(f"{n} {kind}{'' if n == 1 else 's'}" for kind, n in counts.items())
    return f"outbox: {parts} in {show(folder / 'outbox')}/"
