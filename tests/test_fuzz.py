"""Bad input, fuzzed: the public API, the CLI and the broker's messages.

Every call either succeeds or raises the engine's own ``InviteError`` with a known ``code``,
and a refused call leaves every table exactly as it was. A malformed Dramatiq message goes to
the dead letters with a reason, and the worker carries on.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import engine
from engine.core import errors
from engine.core.clock import SystemClock
from engine.core.models import MODELS, Invitation, SchemaVersion
from tests.faults import ROOT
from tests.test_security import snapshot

FUZZ = settings(max_examples=80, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: Every code the engine's errors may carry.
CODES = {cls.code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.InviteError)}


# --- the world each example starts from --------------------------------------------------------

@dataclass
class World:
    a: Any  # a practice with an admin and a standard staff user
    b: Any  # another practice
    clients: list[Any]  # of A: invitable, no consent, no email, invited
    b_client: Any
    token: str  # a real link token of A's invited client (issued directly: no worker runs here)


def wipe() -> None:
    for model in reversed(MODELS):
        if model is not SchemaVersion:
            model.delete().execute()


def make_world(practice_factory: Callable[..., Any], clock: Any) -> World:
    from datetime import timedelta

    from engine.core import tokens

    wipe()
    a, b = practice_factory("Alpha Vets"), practice_factory("Beta Vets")
    by = f"staff:{a.standard.id}"
    now = clock.now()
    ok = engine.create_client(a.id, "Ok Client", by=by, email="ok@example.test", consent=True, now=now)
    shy = engine.create_client(a.id, "No Consent", by=by, email="shy@example.test", consent=False, now=now)
    mute = engine.create_client(a.id, "No Email", by=by, consent=True, now=now)
    live = engine.create_client(a.id, "Invited", by=by, email="live@example.test", consent=True, invite=True,
                                now=now)
    inv = Invitation.get(Invitation.client == live.id)
    raw = tokens.issue(practice_id=a.id, client_id=live.id, invitation_id=inv.id, purpose="invite",
                       expires_at=now + timedelta(days=14), now=now)
    other = engine.create_client(b.id, "Their Client", by=f"staff:{b.standard.id}", email="b@example.test",
                                 consent=True, now=now)
    return World(a, b, [ok, shy, mute, live], other, raw)


def check(call: Callable[[], Any]) -> str:
    """Run ``call``: success, or an InviteError with a known code and not one row changed."""
    before = snapshot()
    try:
        call()
    except errors.InviteError as exc:
        assert exc.code in CODES, exc.code
        assert isinstance(exc.message, str) and exc.message
        assert snapshot() == before, f"refused ({exc.code}) but rows changed"
        return exc.code
    return "ok"


# --- strategies ------------------------------------------------------------------------------------

odd_emails = st.one_of(
    st.sampled_from(["new@example.test", "Ann.Smith+vet@Example.TEST", "zoe@exämple.test"]),
    st.emails(),
    st.text(max_size=60),
    st.builds(lambda local, domain: f"{local}@{domain}", st.text(max_size=20), st.text(max_size=20)),
    st.sampled_from([
        "", " ", "@", "a@", "@b.test", "a@@b.test", "a b@c.test", "a@b", "a@b.", "a@-b.test", ".a@b.test",
        "a..b@c.test", "\"quoted\"@b.test", "zoë@exämple.test", "ok@example.test\r\nBcc: eve@evil.test",
        "ok@example.test\n", "a" * 65 + "@b.test", "a@" + "b" * 64 + ".test", "a@" + ("b" * 60 + ".") * 5 + "test",
        "<ok@example.test>", "Ok <ok@example.test>", "ok@example.test, eve@evil.test", "ok@[127.0.0.1]",
        "ok@localhost", "\x00@b.test", "ok@example.test\u2028",
    ]),
)
names = st.one_of(
    st.sampled_from(["Ann Smith", "Zoë Ng", "O'Brien-Ávila", "李小龙", "Dr. Jo Bloggs, Jr."]),
    st.text(max_size=250),
    st.sampled_from(["", " ", "\t", "Eve\r\nBcc: eve@evil.test", "Zoë 🐶 Ng", "\u202eevil", "a" * 201,
                     "{{ 7*7 }}", "<script>x</script>", "=?utf-8?q?=0D=0ABcc:?=", "\x00", "Ann\u200bSmith"]),
)
messages = st.one_of(
    st.none(),
    st.text(max_size=300),
    st.builds(lambda piece, n: piece * n, st.sampled_from(["a", "é", "🐶", "\n", "\r\n", "{{ 7*7 }}", " "]),
              st.integers(0, 2600)),
    st.sampled_from(["", "   ", "\r\n\r\nBcc: eve@evil.test", "line one\nline two", "\x07bell", "\u2029"]),
)
junk_ids = st.one_of(
    st.integers(min_value=-3, max_value=2**70),
    st.sampled_from(["1", "", None, 1.0, True, False, [1], {"id": 1}, b"1", 2**63, -(2**63)]),
)
junk_actors = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "staff:", "staff:0", "staff:-1", "staff:abc", "staff:99999999", "system:", "system:X",
                     "system:portal", "system:intake", "root", None, 5, "staff:1 ", " staff:1", "staff:1\n"]),
)
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
junk_tokens = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=B64URL, min_size=43, max_size=43),
    st.binary(max_size=50),
    st.integers(),
    st.none(),
    st.builds(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="), st.binary(min_size=32, max_size=32)),
)


def pick(data: Any, world: World, junk: st.SearchStrategy[Any], *real: Any) -> Any:
    """Mostly a real value (so calls get past the first check), sometimes junk."""
    if real and data.draw(st.sampled_from([True, True, True, True, False])):
        return data.draw(st.sampled_from(list(real)))
    return data.draw(junk)


# --- the public API -----------------------------------------------------------------------------

OPERATIONS = ["create_client", "invite", "resend", "change_portal_email", "change_primary_email", "disable",
              "share_documents", "update_client", "verify_token", "redeem_token", "record_sign_in",
              "set_permissions", "portal_status", "timeline", "request_password_reset", "create_practice",
              "update_practice"]


@FUZZ
@given(data=st.data())
def test_fuzzed_api_calls_succeed_or_refuse_with_a_code_and_no_partial_rows(
    broker, practice_factory, clock, data
):
    w = make_world(practice_factory, clock)
    staff = [f"staff:{w.a.standard.id}", f"staff:{w.a.admin.id}", f"staff:{w.b.standard.id}", "system:intake"]
    pid = pick(data, w, junk_ids, w.a.id, w.a.id, w.b.id)
    cid = pick(data, w, junk_ids, *(c.id for c in w.clients), w.b_client.id)
    op = data.draw(st.sampled_from(OPERATIONS))
    by = pick(data, w, junk_actors, *(["system:portal"] if op in ("redeem_token", "record_sign_in") else staff))
    calls: dict[str, Callable[[], Any]] = {
        "create_client": lambda: engine.create_client(
            pid, data.draw(names), by=by, email=data.draw(st.one_of(st.none(), odd_emails)),
            consent=data.draw(st.booleans()), invite=data.draw(st.booleans()),
            idempotency_key=data.draw(st.one_of(st.none(), st.text(max_size=300)))),
        "invite": lambda: engine.invite(pid, cid, by=by, message=data.draw(messages),
                                        idempotency_key=data.draw(st.one_of(st.none(), st.text(max_size=300)))),
        "resend": lambda: engine.resend(pid, cid, by=by, message=data.draw(messages)),
        "change_portal_email": lambda: engine.change_portal_email(pid, cid, data.draw(odd_emails), by=by),
        "change_primary_email": lambda: engine.change_primary_email(
            pid, cid, data.draw(odd_emails), by=by,
            portal_action=data.draw(st.sampled_from(["keep", "disable_and_resend", "", "KEEP", "drop"]))),
        "disable": lambda: engine.disable(pid, cid, by=by),
        "share_documents": lambda: engine.share_documents(
            pid, cid, by=by, message=data.draw(messages), documents=data.draw(junk_ids)),
        "update_client": lambda: engine.update_client(pid, cid, by=by, name=data.draw(st.one_of(st.none(), names))),
        "verify_token": lambda: engine.verify_token(pid, pick(data, w, junk_tokens, w.token)),
        "redeem_token": lambda: engine.redeem_token(
            pid, pick(data, w, junk_tokens, w.token), data.draw(st.one_of(st.text(max_size=40), st.none())), by=by),
        "record_sign_in": lambda: engine.record_sign_in(pid, cid, by=by),
        "set_permissions": lambda: engine.set_permissions(
            pid, cid, by=by, can_pay=data.draw(st.sampled_from([None, True, False, 1, "yes"])),
            can_view_billing=data.draw(st.sampled_from([None, True, False]))),
        "portal_status": lambda: engine.portal_status(pid, cid),
        "timeline": lambda: engine.timeline(pid, client_id=cid),
        "request_password_reset": lambda: engine.request_password_reset(pid, cid, by=by),
        "create_practice": lambda: engine.create_practice(
            data.draw(names), time_zone=data.draw(st.one_of(st.sampled_from(["UTC", "Europe/Paris"]),
                                                             st.text(max_size=30))),
            send_window=data.draw(st.one_of(st.none(), st.tuples(st.integers(-5, 1500), st.integers(-5, 1500))))),
        "update_practice": lambda: engine.update_practice(
            pid, by=by, name=data.draw(names),
            reminder_offsets_s=data.draw(st.lists(st.integers(-10, 10**7), max_size=12)),
            lifetime_s=data.draw(junk_ids)),
    }
    outcome = check(calls[op])
    event(f"{op}: {outcome}")  # --hypothesis-show-statistics: what the examples reached
    # A practice never reaches another's client: B's id with A's client is never a success.
    if pid == w.b.id and cid in [c.id for c in w.clients] and op not in ("create_client", "create_practice",
                                                                          "verify_token", "redeem_token",
                                                                          "update_practice"):
        assert outcome != "ok", op


# --- the CLI ---------------------------------------------------------------------------------------------

def run_cli(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    from engine.cli.main import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


cli_text = st.one_of(st.text(max_size=60).filter(lambda s: "\x00" not in s), st.sampled_from(
    ["", "-", "--", "--json", "-1", "0", "1e9", "99999999999999999999", "Eve\r\nBcc: x", "--by", "staff:1"]))


@FUZZ
@given(data=st.data())
def test_fuzzed_cli_exits_with_a_code_and_one_line_never_a_traceback(broker, practice_factory, clock, capsys, data):
    w = make_world(practice_factory, clock)
    ids = st.one_of(st.sampled_from([str(w.a.id), str(w.b.id), str(w.clients[0].id), str(w.clients[3].id)]),
                    cli_text)
    by = st.one_of(st.sampled_from([f"staff:{w.a.standard.id}", f"staff:{w.b.admin.id}"]), cli_text)
    argv = data.draw(st.one_of(
        st.tuples(st.just("invite"), ids, ids, st.just("--by"), by, st.just("--message"),
                  st.one_of(cli_text, messages.filter(lambda m: m is not None and "\x00" not in m))),
        st.tuples(st.just("client"), st.just("create"), ids, cli_text, st.just("--email"), cli_text,
                  st.just("--consent"), st.just("--invite"), st.just("--by"), by),
        st.tuples(st.just("token"), st.just("verify"), ids, st.one_of(cli_text, st.just(w.token))),
        st.tuples(st.just("status"), ids, ids, st.just("--json")),
        st.tuples(st.just("resend"), ids, ids, st.just("--by"), by),
        st.tuples(st.just("portal-email"), ids, ids, cli_text, st.just("--by"), by),
        st.tuples(st.just("timeline"), ids, st.just("--client"), ids),
        st.lists(cli_text, max_size=6),
    ))
    before = snapshot()
    code, out, err = run_cli(list(argv), capsys)
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in out + err
    if code == 1:
        line = err.strip().splitlines()
        assert len(line) == 1 and line[0].startswith("invites: refused ("), err
        assert line[0].split("(", 1)[1].split(")", 1)[0] in CODES
    if code != 0:
        assert snapshot() == before


def test_cli_subprocess_refuses_bad_input_in_one_line(broker, practice, database_url, process_env):
    env = process_env(DATABASE_URL=database_url, INVITES_ACTOR=f"staff:{practice.standard.id}")
    cases = [
        (["invite", str(practice.id), "not-a-number"], 2, "invalid int value"),
        (["client", "create", str(practice.id), "Eve\r\nBcc: eve@evil.test", "--email", "e@example.test"], 1,
         "refused (invalid_input)"),
        (["client", "create", str(practice.id), "Eve", "--email", "e@example.test\nBcc: x@evil.test"], 1,
         "refused (malformed_email)"),
        (["token", "verify", str(practice.id), "A" * 5000], 1, "refused (token_unknown)"),
        (["invite", str(practice.id), "1", "--message", "x" * 5000], 1, "refused (invalid_input)"),
    ]
    for argv, expected, text in cases:
        done = subprocess.run([sys.executable, "-m", "engine.cli", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == expected, (argv, done.stderr)
        assert text in done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr


# --- malformed messages through the broker ---------------------------------------------------------------

def _dead_letters(broker: Any) -> dict[str, Any]:
    from engine.monitoring.deadletters import list_dead

    return {d.message_id: d for d in list_dead(broker, now=SystemClock().now())}


def _raw_message(actor: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None,
                 queue: str = "invitations") -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs=kwargs or {}, options={})


def test_malformed_messages_go_to_dead_letters_with_a_reason_and_the_worker_carries_on(
    practice, client_factory, staff_by, worker, sink
):
    from workflows import actors

    broker = worker.broker
    sent = [
        actors.advance_invitation.send("abc"),
        actors.advance_invitation.send(None),
        actors.advance_invitation.send(-5),
        actors.advance_invitation.send(1.5),
        actors.advance_invitation.send(True),
        actors.advance_invitation.send([1, 2]),
        actors.advance_invitation.send({"invitation_id": 1}),
        actors.advance_invitation.send('{"invitation_id": 1}'),
        actors.advance_invitations.send("1,2,3"),
        actors.advance_invitations.send([]),
        actors.advance_invitations.send([1, "two"]),
        actors.advance_invitations.send(list(range(1, actors.MAX_BATCH + 2))),
        actors.send_outbox_email.send("x"),
        broker.enqueue(_raw_message("advance_invitation", (1, 2, 3))),
        broker.enqueue(_raw_message("advance_invitation", (), {"invitation_id": 1, "drop": "tables"})),
        broker.enqueue(_raw_message("no_such_actor", (1,))),
        broker.enqueue(_raw_message("invitation_failed", ("not a message", None))),
    ]
    worker.drain()
    dead = _dead_letters(broker)
    for message in sent:
        assert message.message_id in dead, (message.actor_name, message.args, message.kwargs)
        letter = dead[message.message_id]
        assert letter.error, (message.actor_name, message.args, "dead without a reason")
    # And the worker carries on: every thread alive, the next invitation is delivered
    assert all(t.is_alive() for t in worker.worker.workers)
    client = client_factory(email="still@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    assert len(sink.to("still@example.test")) == 1


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children,
                                                                               max_size=4)),
    max_leaves=8,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(st.sampled_from(
    ["advance_invitation", "advance_invitations", "send_outbox_email", "invitation_failed"]),
    st.lists(json_values, max_size=3)), min_size=1, max_size=6))
def test_fuzzed_message_arguments_are_handled_or_dead_lettered(practice, broker, batch):
    from tests.conftest import RunningWorker

    before = snapshot()
    sent = [broker.enqueue(_raw_message(actor, tuple(args), queue="mail" if actor == "send_outbox_email"
                                       else "invitations")) for actor, args in batch]
    # The worker starts after Hypothesis drew the batch: Dramatiq's own use of `random` in its
    # threads must not look like the strategies' (Hypothesis refuses that).
    running = RunningWorker(broker)
    running.worker.start()
    try:
        running.drain()
        assert all(t.is_alive() for t in running.worker.workers)
    finally:
        running.worker.stop()
    dead = _dead_letters(broker)
    for message in sent:
        if message.message_id in dead:
            assert dead[message.message_id].error, (message.actor_name, message.args)
    # Nothing real was touched by messages about invitations that do not exist
    assert snapshot() == before
