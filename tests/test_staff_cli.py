"""The staff commands of ``invites``: in-process on both databases, and once as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from engine.cli.main import main
from tests.conftest import TEST_REDIS_URL, token_of

ROOT = Path(__file__).parents[1]


@pytest.fixture
def run(capsys, monkeypatch, broker):
    """``invites …`` in this process: returns (exit code, stdout, stderr).

    The process is booted already (the test's database, broker and worker); booting again would
    swap the database under worker threads that are using it. The real process is tested below.
    """
    monkeypatch.setattr("engine.core.runtime.boot", lambda *args, **kwargs: None)

    def invoke(*args: object) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return invoke


def ok_json(result: tuple[int, str, str]) -> object:
    code, out, err = result
    assert code == 0, err
    return json.loads(out)


def test_cli_resend_share_emails_and_disable(run, practice, client_factory, staff_by, clock, worker, sink):
    client = client_factory(email="cli@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    resent = ok_json(run("resend", practice.id, client.id, "--message", "A new link", "--by", staff_by, "--json"))
    assert resent["state"] == "queued" and resent["email"] == "cli@example.test"
    changed = ok_json(run("portal-email", practice.id, client.id, "cli2@example.test", "--by", staff_by, "--json"))
    assert changed["portal_action"] == "resent" and changed["portal_email"] == "cli2@example.test"
    primary = ok_json(run("primary-email", practice.id, client.id, "cli3@example.test", "--disable-and-resend",
                          "--by", staff_by, "--json"))
    assert primary["portal_action"] == "disable_and_resend" and primary["invitation_id"]
    worker.drain()
    assert len(sink.to("cli3@example.test")) == 1

    other = client_factory(email="docs@example.test")
    shared = ok_json(run("share", practice.id, other.id, "--documents", "2", "--by", "system:documents", "--json"))
    assert shared["outcome"] == "invited"
    code, out, _ = run("disable", practice.id, other.id, "--by", staff_by)
    assert code == 0 and "disabled" in out
    assert engine.portal_status(practice.id, other.id).status == "disabled"

    # A refusal is one line with the engine's code, exit 1; bad usage is exit 2.
    code, out, err = run("resend", practice.id, 999_999, "--by", staff_by)
    assert (code, out) == (1, "")
    assert err.strip() == "invites: refused (unknown_client): no client with that id in this practice"
    with pytest.raises(SystemExit) as usage:
        run("primary-email", practice.id, client.id)
    assert usage.value.code == 2


def test_cli_permissions_reset_and_portal(run, practice, client_factory, staff_by, clock, worker, sink):
    admin = f"staff:{practice.admin.id}"
    client = client_factory(email="perm@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    engine.redeem_token(practice.id, token_of(sink.to("perm@example.test")[0]), "a good long password")

    code, _, err = run("permissions", practice.id, client.id, "--billing", "on", "--pay", "on", "--by", staff_by)
    assert code == 1 and "(permission_rule)" in err
    shown = ok_json(run("permissions", practice.id, client.id, "--billing", "on", "--messaging", "off",
                        "--by", staff_by, "--json"))
    assert shown["permissions"]["can_view_billing"] and not shown["permissions"]["can_message"]
    code, out, _ = run("permissions", practice.id, client.id, "--by", staff_by)
    assert code == 0 and "can_view_billing" in out and "effective: on" in out

    reset = ok_json(run("reset-password", practice.id, client.id, "--by", "system:portal", "--json"))
    worker.drain()
    assert reset["to_email"] == "perm@example.test" and reset["request_number"] == 1
    assert engine.verify_token(practice.id, token_of(sink.to("perm@example.test")[-1])).purpose == "reset"

    code, _, err = run("portal", "off", practice.id, "--by", staff_by)
    assert code == 1 and "(forbidden)" in err
    assert ok_json(run("portal", "off", practice.id, "--by", admin, "--json"))["portal_enabled"] is False
    clock.advance(hours=2)
    on = ok_json(run("portal", "on", practice.id, "--by", admin, "--json"))
    assert on["paused_s"] == 7200
    link = ok_json(run("portal", "link", practice.id, "--by", staff_by, "--json"))
    assert link["portal_url"] == practice.portal_url
    code, out, _ = run("portal", "widget", practice.id, "--label", "Our portal", "--by", staff_by)
    assert code == 0 and out.strip().startswith("<a ") and out.strip().endswith(">Our portal</a>")


def test_cli_mass_invite_with_progress_and_views(run, practice, client_factory, staff_by, clock, worker, sink):
    admin = f"staff:{practice.admin.id}"
    for _ in range(5):
        client_factory()
    client_factory(email=None)
    code, _, err = run("mass-invite", practice.id, "--by", staff_by)
    assert code == 1 and "(forbidden)" in err
    code, out, err = run("mass-invite", practice.id, "--batch-size", "2", "--writers", "2", "--by", admin)
    worker.drain()
    assert code == 0
    assert re.fullmatch(r"invited 5 of 6 clients in 3 batches \(\d+\.\d s\); skipped: 1 no email", out.strip())
    # The bar is redrawn in place on stderr, ending at 100 %.
    assert err.count("\r") == 3 and "100% 6/6 clients" in err and err.endswith("\n")
    again = ok_json(run("mass-invite", practice.id, "--no-progress", "--by", admin, "--json"))
    assert again["invited"] == 0 and again["skipped"]["already_active"] == 5

    pending = ok_json(run("view", "pending", practice.id, "--by", staff_by, "--json"))
    assert pending["total"] == 5 and {i["state"] for i in pending["items"]} == {"sent"}
    scheduled = ok_json(run("view", "scheduled", practice.id, "--limit", "2", "--by", staff_by, "--json"))
    assert [i["next_step"] for i in scheduled["items"]] == ["reminder", "reminder"] and scheduled["total"] == 5
    code, out, _ = run("view", "attention", practice.id, "--by", staff_by)
    assert code == 0 and out.strip().endswith("(none of 0)")
    code, out, _ = run("view", "pending", practice.id, "--limit", "2", "--offset", "1", "--by", staff_by)
    assert code == 0 and out.splitlines()[0].split()[:3] == ["CLIENT_ID", "CLIENT_NAME", "EMAIL"]
    assert out.strip().endswith("(2-3 of 5)")


def test_cli_staff_commands_as_a_real_process(tmp_path, redis_client):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "BROKER_URL": TEST_REDIS_URL,
           "MAIL_URL": f"file://{tmp_path / 'outbox'}"}
    env.pop("INVITES_ACTOR", None)

    def cli(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    try:
        assert cli("db", "upgrade").returncode == 0
        practice = json.loads(cli("practice", "create", "Proc Vets", "--json").stdout)["practice_id"]
        admin = json.loads(cli("staff", "add", practice, "Ada", "ada@proc.test", "--role", "admin",
                               "--json").stdout)["actor"]
        for n in range(3):
            assert cli("client", "create", practice, f"C{n}", "--email", f"c{n}@example.test", "--consent",
                       "--by", admin).returncode == 0
        done = cli("mass-invite", practice, "--by", admin, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["invited"] == 3 and "100% 3/3 clients" in done.stderr
        pending = cli("view", "pending", practice, "--json", "--by", admin)
        assert json.loads(pending.stdout)["total"] == 3
        refused = cli("reset-password", practice, 1, "--by", admin)
        assert refused.returncode == 1 and refused.stderr.startswith("invites: refused (not_signed_in)")
    finally:
        redis_client.flushdb()


def test_p12_cli_resend_after_sign_in_shows_portal_link(run, practice, client_factory, staff_by, clock, worker,
                                                        sink):
    client = client_factory(email="in@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    engine.record_sign_in(practice.id, client.id)
    code, out, err = run("resend", practice.id, client.id, "--by", staff_by)
    assert (code, out) == (1, "")
    assert err.startswith("invites: refused (already_signed_in)")
    assert err.strip().endswith(practice.portal_url) and len(err.strip().splitlines()) == 1
    code, _, err = run("invite", practice.id, client.id, "--by", staff_by)
    assert code == 1 and practice.portal_url in err


def test_p11_cli_resend_message_keeps_line_breaks_and_refuses_a_tab(run, practice, client_factory, staff_by,
                                                                    clock, worker, sink):
    client = client_factory(email="lines@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    code, _, err = run("resend", practice.id, client.id, "--message", "Columns\tnot welcome", "--by", staff_by)
    assert code == 1 and "(invalid_input)" in err and "U+0009" in err
    resent = ok_json(run("resend", practice.id, client.id, "--message", "Line one\r\nLine two", "--by", staff_by,
                         "--json"))
    assert engine.portal_status(practice.id, client.id).invitation_id == resent["invitation_id"]
    from engine.core.models import Invitation

    assert Invitation.get_by_id(resent["invitation_id"]).custom_message == "Line one\nLine two"
