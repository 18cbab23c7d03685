"""Security: nobody gets in who should not, and nothing secret leaks.

Tokens: 32 random bytes, only their SHA-256 stored, compared in constant time, expiring,
single use, revoked by a resend, a disable, an email change; the portal switched off refuses
every link. Tenants: no call reaches another practice's client. Emails: no header injection,
no template injection. Configuration secrets never reach output or logs.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

import engine
from engine.core import tokens
from engine.core.db import connection
from engine.core.models import MODELS, Client, Invitation, Token
from engine.core.settings import configure, get_settings
from tests.conftest import token_of
from tests.faults import ROOT
from workflows import actors

TOKEN = re.compile(r"token=([A-Za-z0-9_-]{43})\b")


# --- helpers ---------------------------------------------------------------------------------

def snapshot() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, as plain values: two snapshots compare equal iff nothing changed."""
    return {
        model._meta.table_name: sorted(
            (tuple(str(v) for v in row.values()) for row in model.select().dicts()), key=str
        )
        for model in MODELS
    }


def all_stored_text() -> str:
    return "\n".join("\t".join(row) for rows in snapshot().values() for row in rows)


def invited(practice: Any, client_factory: Any, worker: Any, sink: Any, address: str, **kw: Any) -> tuple[Any, str]:
    """A client invited and emailed; returns the client and the raw token of the email."""
    client = client_factory(email=address, **kw)
    engine.invite(practice.id, client.id, by=f"staff:{practice.standard.id}")
    worker.drain()
    return client, token_of(sink.to(address)[-1])


def latest_token(sink: Any, address: str) -> str:
    [found] = TOKEN.findall(sink.to(address)[-1].get_body(preferencelist=("plain",)).get_content())
    return found


def refused(call: Callable[[], Any], code: str) -> engine.InviteError:
    with pytest.raises(engine.InviteError) as caught:
        call()
    assert caught.value.code == code, caught.value.to_dict()
    return caught.value


# --- tokens ----------------------------------------------------------------------------------

def test_tokens_are_32_random_bytes_and_only_their_hash_is_stored_or_logged(
    practice, client_factory, staff_by, worker, sink, clock, all_logs
):
    # Given clients invited, reminded, and resent to (every path that issues a token)
    raws = []
    for n in range(12):
        _, raw = invited(practice, client_factory, worker, sink, f"tok{n}@example.test")
        raws.append(raw)
    clock.advance(days=3, minutes=1)
    from workflows.sweep import sweep

    sweep(clock.now(), enqueue=actors.enqueue_steps, lease_s=60)
    worker.drain()
    for n in range(4):
        raws.append(latest_token(sink, f"tok{n}@example.test"))
        engine.resend(practice.id, Client.get(Client.primary_email == f"tok{n}@example.test").id, by=staff_by)
    worker.drain()
    raws += [latest_token(sink, f"tok{n}@example.test") for n in range(4)]
    # and one link opened and one redeemed
    engine.verify_token(practice.id, raws[5])
    engine.redeem_token(practice.id, raws[6], "a long enough password")

    # Then each token is 32 bytes of URL-safe base64, all different, bits evenly spread
    assert len(set(raws)) == len(raws) == 12 + 4 + 4
    decoded = [base64.urlsafe_b64decode(raw + "=") for raw in raws]
    assert all(len(b) == 32 for b in decoded)
    ones = sum(bin(byte).count("1") for b in decoded for byte in b)
    bits = 256 * len(decoded)
    assert abs(ones - bits / 2) < 6 * (bits / 4) ** 0.5, "token bits are not evenly spread"
    # And the database holds their SHA-256, never the token itself
    stored = all_stored_text()
    for raw in raws:
        assert raw not in stored
        assert hashlib.sha256(raw.encode()).hexdigest() in stored
    assert Token.select().count() >= len(raws)
    # And no log line, peewee's SQL log at DEBUG included, ever carried one
    assert any(r.name == "peewee" for r in all_logs.records), "the SQL log was not captured"
    logged = all_logs.text()
    for raw in raws:
        assert raw not in logged


def test_tokens_are_compared_in_constant_time(practice, client_factory, worker, sink, monkeypatch):
    _, raw = invited(practice, client_factory, worker, sink, "ct@example.test")
    assert "hmac.compare_digest" in inspect.getsource(tokens.find)
    calls = []
    real = tokens.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    engine.verify_token(practice.id, raw)
    digest = hashlib.sha256(raw.encode()).hexdigest()
    assert calls == [(digest, digest)]


def test_p7_links_expire(practice, client_factory, staff_by, worker, sink, clock):
    client, raw = invited(practice, client_factory, worker, sink, "exp@example.test")
    sent_at = engine.portal_status(practice.id, client.id).sent_at
    clock.set(sent_at + timedelta(seconds=practice.lifetime_s) - timedelta(seconds=1))
    engine.verify_token(practice.id, raw)
    clock.advance(seconds=1)
    refused(lambda: engine.verify_token(practice.id, raw), "token_expired")
    refused(lambda: engine.redeem_token(practice.id, raw, "a long enough password"), "token_expired")

    # A reset link lives RESET_TOKEN_TTL_S only
    other, first = invited(practice, client_factory, worker, sink, "reset@example.test")
    engine.redeem_token(practice.id, first, "a long enough password")
    engine.request_password_reset(practice.id, other.id, by=staff_by)
    worker.drain()
    reset = latest_token(sink, "reset@example.test")
    assert reset != first
    clock.advance(seconds=get_settings().reset_token_ttl_s + 1)
    refused(lambda: engine.verify_token(practice.id, reset), "token_expired")


def test_p7_a_link_verified_twice_changes_nothing_and_is_redeemed_once(practice, client_factory, worker, sink):
    client, raw = invited(practice, client_factory, worker, sink, "once@example.test")
    before = snapshot()
    engine.verify_token(practice.id, raw)
    engine.verify_token(practice.id, raw)  # a mail scanner, then the person
    assert snapshot() == before
    assert engine.redeem_token(practice.id, raw, "a long enough password") == client.id
    refused(lambda: engine.redeem_token(practice.id, raw, "another long password"), "token_used")
    refused(lambda: engine.verify_token(practice.id, raw), "token_used")


def test_p7_two_redeems_at_once_only_one_wins(practice, client_factory, worker, sink):
    client, raw = invited(practice, client_factory, worker, sink, "race@example.test")
    results: list[Any] = []
    start = threading.Barrier(4)

    def redeem() -> None:
        with connection():
            start.wait()
            try:
                results.append(engine.redeem_token(practice.id, raw, "a long enough password"))
            except engine.InviteError as exc:
                results.append(exc.code)

    threads = [threading.Thread(target=redeem) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(map(str, results)) == sorted([str(client.id), "token_used", "token_used", "token_used"])


WRONG_SHAPES = [
    "", "x", "A" * 42, "A" * 44, "A" * 43 + "\n", " " + "A" * 43, "A" * 42 + "=", "A" * 42 + "/", "A" * 42 + "+",
    "é" * 43, "\x00" * 43, "../../etc/passwd", "' OR '1'='1", "%" * 43, "A" * 100_000,
]


def test_tokens_of_every_wrong_shape_are_unknown(practice, client_factory, worker, sink):
    _, raw = invited(practice, client_factory, worker, sink, "shape@example.test")
    # a near miss of a real token, and the real one in other cases, are unknown too
    near = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    before = snapshot()
    for shape in [*WRONG_SHAPES, near, raw.upper() if raw.upper() != raw else raw.lower()]:
        refused(lambda shape=shape: engine.verify_token(practice.id, shape), "token_unknown")
        refused(lambda shape=shape: engine.redeem_token(practice.id, shape, "a long enough password"),
                "token_unknown")
    assert snapshot() == before
    assert engine.verify_token(practice.id, raw).client_id  # the real one still works


# --- revocation --------------------------------------------------------------------------------

def test_p11_resend_revokes_earlier_links(practice, client_factory, staff_by, worker, sink):
    client, first = invited(practice, client_factory, worker, sink, "again@example.test")
    engine.resend(practice.id, client.id, by=staff_by, message="Here is a new link")
    worker.drain()
    second = latest_token(sink, "again@example.test")
    assert refused(lambda: engine.verify_token(practice.id, first), "token_revoked").details["reason"] == "resent"
    refused(lambda: engine.redeem_token(practice.id, first, "a long enough password"), "token_revoked")
    assert engine.verify_token(practice.id, second).client_id == client.id


def test_p14_disable_revokes_links(practice, client_factory, staff_by, worker, sink):
    client, raw = invited(practice, client_factory, worker, sink, "off@example.test")
    engine.disable(practice.id, client.id, by=staff_by)
    refused(lambda: engine.verify_token(practice.id, raw), "token_revoked")
    refused(lambda: engine.redeem_token(practice.id, raw, "a long enough password"), "token_revoked")
    refused(lambda: engine.record_sign_in(practice.id, client.id), "access_disabled")


def test_p9_portal_email_change_revokes_links(practice, client_factory, staff_by, worker, sink):
    client, raw = invited(practice, client_factory, worker, sink, "old@example.test")
    engine.change_portal_email(practice.id, client.id, "new@example.test", by=staff_by)
    worker.drain()
    refused(lambda: engine.verify_token(practice.id, raw), "token_revoked")
    assert engine.verify_token(practice.id, latest_token(sink, "new@example.test")).client_id == client.id


def test_p10_primary_email_disable_and_resend_revokes_links(practice, client_factory, staff_by, worker, sink):
    client, raw = invited(practice, client_factory, worker, sink, "prim@example.test")
    engine.change_primary_email(practice.id, client.id, "prim2@example.test", by=staff_by,
                                portal_action="disable_and_resend")
    worker.drain()
    refused(lambda: engine.verify_token(practice.id, raw), "token_revoked")
    assert engine.verify_token(practice.id, latest_token(sink, "prim2@example.test")).client_id == client.id


def test_p15_portal_off_refuses_every_link_and_sign_in(practice, client_factory, worker, sink):
    client, raw = invited(practice, client_factory, worker, sink, "closed@example.test")
    engine.set_portal_enabled(practice.id, False, by=f"staff:{practice.admin.id}")
    before = snapshot()
    refused(lambda: engine.verify_token(practice.id, raw), "portal_off")
    refused(lambda: engine.redeem_token(practice.id, raw, "a long enough password"), "portal_off")
    refused(lambda: engine.record_sign_in(practice.id, client.id), "portal_off")
    assert snapshot() == before


# --- tenants ------------------------------------------------------------------------------------

def test_p1_no_call_reaches_a_client_of_another_practice(practice, practice_factory, client_factory, worker, sink):
    # Given a client of practice A with a live invitation and link, and practice B next door
    client, raw = invited(practice, client_factory, worker, sink, "mine@example.test")
    invitation = Invitation.get(Invitation.client == client.id)
    other = practice_factory("Other Vets")
    b_admin, b_staff = f"staff:{other.admin.id}", f"staff:{other.standard.id}"
    a_admin = f"staff:{practice.admin.id}"
    before = snapshot()
    calls: list[tuple[str, Callable[[], Any], tuple[str, ...]]] = [
        ("invite", lambda: engine.invite(other.id, client.id, by=b_staff), ("unknown_client",)),
        ("resend", lambda: engine.resend(other.id, client.id, by=b_staff), ("unknown_client",)),
        ("disable", lambda: engine.disable(other.id, client.id, by=b_staff), ("unknown_client",)),
        ("share", lambda: engine.share_documents(other.id, client.id, by=b_staff), ("unknown_client",)),
        ("portal email", lambda: engine.change_portal_email(other.id, client.id, "x@example.test", by=b_staff),
         ("unknown_client",)),
        ("primary email", lambda: engine.change_primary_email(
            other.id, client.id, "x@example.test", by=b_staff, portal_action="disable_and_resend"),
         ("unknown_client",)),
        ("permissions", lambda: engine.set_permissions(other.id, client.id, by=b_staff, can_message=False),
         ("unknown_client",)),
        ("read permissions", lambda: engine.permissions(other.id, client.id, by=b_staff), ("unknown_client",)),
        ("reset", lambda: engine.request_password_reset(other.id, client.id, by=b_staff), ("unknown_client",)),
        ("update", lambda: engine.update_client(other.id, client.id, by=b_staff, name="Mallory"),
         ("unknown_client",)),
        ("status", lambda: engine.portal_status(other.id, client.id), ("unknown_client",)),
        ("timeline", lambda: engine.timeline(other.id, invitation_id=invitation.id), ("unknown_invitation",)),
        ("client timeline", lambda: engine.timeline(other.id, client_id=client.id), ("unknown_client",)),
        ("sign-in", lambda: engine.record_sign_in(other.id, client.id), ("unknown_client", "not_invited")),
        ("verify", lambda: engine.verify_token(other.id, raw), ("token_unknown",)),
        ("redeem", lambda: engine.redeem_token(other.id, raw, "a long enough password"), ("token_unknown",)),
        # A's own staff, naming practice B: they are nobody there
        ("foreign staff", lambda: engine.invite(other.id, client.id, by=a_admin), ("unknown_staff",)),
        ("foreign admin", lambda: engine.set_portal_enabled(other.id, False, by=a_admin), ("unknown_staff",)),
        ("B's staff on A", lambda: engine.invite(practice.id, client.id, by=b_staff), ("unknown_staff",)),
        ("B's admin on A", lambda: engine.disable(practice.id, client.id, by=b_admin), ("unknown_staff",)),
    ]
    for name, call, codes in calls:
        with pytest.raises(engine.InviteError) as caught:
            call()
        assert caught.value.code in codes, (name, caught.value.to_dict())
    # Then nothing changed anywhere, and A's link still works in A
    assert snapshot() == before
    assert engine.verify_token(practice.id, raw).client_id == client.id


# --- emails ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["Eve\r\nBcc: eve@evil.test", "Eve\nBcc: eve@evil.test", "Eve\rX: 1",
                                 "Eve\u2028Bcc: eve@evil.test", "Eve\x00"])
def test_header_injection_is_refused_before_anything_is_written(practice, staff_by, bad):
    before = snapshot()
    refused(lambda: engine.create_client(practice.id, bad, by=staff_by, email="e@example.test", consent=True),
            "invalid_input")
    refused(lambda: engine.create_client(practice.id, "Eve", by=staff_by, email=f"e@example.test{bad[3:]}",
                                         consent=True), "malformed_email")
    refused(lambda: engine.create_practice(bad), "invalid_input")
    assert snapshot() == before


def test_names_that_look_like_headers_stay_inside_their_header(practice_factory, client_factory, worker, sink):
    practice = practice_factory('Vets "R" Us, <admin@evil.test> =?utf-8?q?=0D=0ABcc:_x@evil.test?=')
    tricky = ['Eve <eve@evil.test>, "Bob" <bob@evil.test>', "=?utf-8?q?Eve=0D=0ABcc:_eve@evil.test?=",
              "Zoë; Bcc: eve@evil.test"]
    for n, name in enumerate(tricky):
        client = client_factory(practice, name=name, email=f"hdr{n}@example.test")
        engine.invite(practice.id, client.id, by=f"staff:{practice.standard.id}")
    worker.drain()
    for n in range(len(tricky)):
        [mail] = sink.to(f"hdr{n}@example.test")
        assert [a.addr_spec for a in mail["To"].addresses] == [f"hdr{n}@example.test"]
        assert len(mail["From"].addresses) == 1 and "evil" not in mail["From"].addresses[0].addr_spec
        assert not {"bcc", "cc", "x"} & {k.lower() for k in mail.keys()}
    assert len(sink.messages) == len(tricky)


def test_template_injection_is_impossible(practice_factory, client_factory, worker, sink):
    payload = "{{ 1337*1000 }} {% for x in range(3) %}loop{% endfor %} <script>alert(1)</script> ${7*7}"
    practice = practice_factory("{{ 1337*1000 }} Vets")
    client = client_factory(practice, name="{{ 1337*1000 }} <b>Bold</b>", email="tpl@example.test")
    engine.invite(practice.id, client.id, by=f"staff:{practice.standard.id}", message=payload)
    worker.drain()
    [mail] = sink.to("tpl@example.test")
    html = mail.get_body(preferencelist=("html",)).get_content()
    text = mail.get_body(preferencelist=("plain",)).get_content()
    for body in (html, text):
        assert "1337000" not in body and "looploop" not in body
        assert "{{ 1337*1000 }}" in body
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<b>Bold</b>" not in html
    assert "{{ 1337*1000 }}" in str(mail["Subject"]) and "1337000" not in str(mail["Subject"])


# --- configuration secrets ---------------------------------------------------------------------------

def test_smtp_password_is_never_printed_or_logged(practice, client_factory, staff_by, worker, sink,
                                                  smtp_server, all_logs, database_url, process_env):
    secret = "S3cr3t-smtp-Pa55"
    _, port = smtp_server
    url = f"smtp://portal-user:{secret}@127.0.0.1:{port}"
    configure(replace(get_settings(), mail_url=url))
    actors.reset_transport()
    try:
        # The sink offers no AUTH: the login fails, and the failure is recorded and logged
        client = client_factory(email="pw@example.test")
        engine.invite(practice.id, client.id, by=staff_by)
        worker.drain()
        status = engine.portal_status(practice.id, client.id)
        assert status.status == "failed" and status.last_error
        assert secret not in repr(actors.transport())
    finally:
        actors.reset_transport()
    assert secret not in all_logs.text()
    assert secret not in all_stored_text()
    # The CLI, with the secret in its environment, never prints it either
    env = process_env(DATABASE_URL=database_url, MAIL_URL=url, INVITES_ACTOR=staff_by)
    outputs = []
    for argv in (["status", str(practice.id), str(client.id), "--json"],
                 ["timeline", str(practice.id), "--client", str(client.id)],
                 ["view", "attention", str(practice.id), "--by", f"staff:{practice.admin.id}"],
                 ["invite", str(practice.id), "999999"],
                 ["--help"]):
        done = subprocess.run([sys.executable, "-m", "engine.cli", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        outputs.append(done.stdout + done.stderr)
    assert secret not in "\n".join(outputs)
    assert "unknown_client" in outputs[3]


def test_database_password_is_never_printed(tmp_path):
    secret = "S3cr3t-db-Pa55"
    dead = f"postgresql://invites:{secret}@127.0.0.1:9/invites"  # port 9 (discard): nothing answers
    env = {**os.environ, "DATABASE_URL": dead}
    done = subprocess.run([sys.executable, "-m", "engine.cli", "status", "1", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "did not answer" in done.stderr
    assert secret not in done.stdout + done.stderr
