"""The ``invites`` command as people and scripts use it: a real subprocess, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_REDIS_URL

ROOT = Path(__file__).parents[1]


@pytest.fixture
def cli(tmp_path: Path, redis_client):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "BROKER_URL": TEST_REDIS_URL,
        "MAIL_URL": f"file://{tmp_path / 'outbox'}",
    }
    env.pop("INVITES_ACTOR", None)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=env, input=stdin,
            capture_output=True, text=True, timeout=60,
        )

    yield run
    redis_client.flushdb()


def test_cli_invites_a_client_and_reports_codes(cli):
    assert cli("db", "upgrade").returncode == 0
    made = cli("practice", "create", "CLI Clinic", "--time-zone", "Europe/London", "--reminders", "3d,7d",
               "--lifetime", "14d", "--json")
    assert made.returncode == 0, made.stderr
    practice = json.loads(made.stdout)["practice_id"]
    admin = json.loads(cli("staff", "add", str(practice), "Ada", "ada@clinic.test", "--role", "admin",
                           "--json").stdout)["actor"]
    client = cli("client", "create", str(practice), "Rosa", "--email", "rosa@example.test", "--consent",
                 "--by", admin, "--json")
    assert client.returncode == 0, client.stderr
    client_id = json.loads(client.stdout)["client_id"]

    invited = cli("invite", str(practice), str(client_id), "--by", admin, "--message", "See you soon", "--json")
    assert invited.returncode == 0, invited.stderr
    assert json.loads(invited.stdout)["state"] == "queued"

    status = json.loads(cli("status", str(practice), str(client_id), "--json").stdout)
    assert status["status"] == "invited" and status["portal_email"] == "rosa@example.test"

    # Refusals: one line, the engine's code, exit 1.
    refused = cli("invite", str(practice), "9999", "--by", admin)
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("invites: refused (unknown_client)")
    assert len(refused.stderr.strip().splitlines()) == 1
    no_consent = cli("client", "create", str(practice), "Quiet", "--email", "q@example.test", "--invite",
                     "--by", admin)
    assert no_consent.returncode == 1 and "(no_consent)" in no_consent.stderr
    bad_token = cli("token", "verify", str(practice), "not-a-token")
    assert bad_token.returncode == 1 and "(token_unknown)" in bad_token.stderr

    timeline = json.loads(cli("timeline", str(practice), "--client", str(client_id), "--json").stdout)
    assert [e["action"] for e in timeline] == ["client_created", "invited"]


def test_cli_usage_errors_exit_2(cli):
    assert cli("invite").returncode == 2
    assert cli("practice", "create", "X", "--lifetime", "soon").returncode == 2


def test_cli_broker_down_is_exit_3_or_queued_for_the_sweep(cli, tmp_path):
    # With the broker unreachable the invitation is still written: the sweep sends it later.
    cli("db", "upgrade")
    practice = json.loads(cli("practice", "create", "Down Clinic", "--json").stdout)["practice_id"]
    admin = json.loads(cli("staff", "add", str(practice), "Ada", "ada@down.test", "--role", "admin",
                           "--json").stdout)["actor"]
    env_broker = {"BROKER_URL": "redis://127.0.0.1:1/0"}
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "client", "create", str(practice), "Rosa", "--email", "r@example.test",
         "--consent", "--invite", "--by", admin, "--json"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", **env_broker},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(cli("status", str(practice), "1", "--json").stdout)
    assert status["invitation_state"] == "queued"


def test_cli_diagram_is_the_table():
    out = subprocess.run([sys.executable, "-m", "engine.cli", "diagram"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "queued --> sent: deliver" in out.stdout
