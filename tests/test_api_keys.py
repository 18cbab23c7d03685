"""API keys (B14): `invites keys` create, list, rotate, revoke; hashed at rest; usable over HTTP."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.core.models import ApiKey
from tests.conftest import Api

ROOT = Path(__file__).parents[1]


def _cli(process_env: Any, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=process_env(DATABASE_URL=database_url), timeout=60)


def test_b14_keys_cli_creates_lists_rotates_and_revokes(api: Api, practice: Any, process_env: Any,
                                                        database_url: str) -> None:
    made = _cli(process_env, database_url, "keys", "create", "--practice", str(practice.id), "--name", "booking",
                "--scope", "invite,staff", "--json")
    assert made.returncode == 0, made.stderr
    first = json.loads(made.stdout)
    assert re.fullmatch(r"pik_[a-z0-9]{8}_[A-Za-z0-9_-]{43}", first["key"])
    assert first["key"].startswith(first["prefix"])
    assert first["scopes"] == ["invite", "staff"]
    # Only the hash is stored: the key itself is nowhere in the row.
    row = ApiKey.get_by_id(first["id"])
    assert first["key"] not in (row.key_hash, row.lookup_id) and len(row.key_hash) == 64
    assert api.http.get("/v1/practice", headers=api.headers(first["key"])).status_code == 200

    listed = _cli(process_env, database_url, "keys", "list", str(practice.id))
    assert listed.returncode == 0 and first["prefix"] in listed.stdout and first["key"] not in listed.stdout

    rotated = _cli(process_env, database_url, "keys", "rotate", str(first["id"]), "--json")
    assert rotated.returncode == 0, rotated.stderr
    second = json.loads(rotated.stdout)
    assert (second["name"], second["scopes"]) == ("booking", ["invite", "staff"])
    assert api.http.get("/v1/practice", headers=api.headers(first["key"])).status_code == 401
    assert api.http.get("/v1/practice", headers=api.headers(second["key"])).status_code == 200

    revoked = _cli(process_env, database_url, "keys", "revoke", str(second["id"]))
    assert revoked.returncode == 0, revoked.stderr
    assert api.http.get("/v1/practice", headers=api.headers(second["key"])).status_code == 401
    again = _cli(process_env, database_url, "keys", "revoke", str(second["id"]))
    assert again.returncode == 1 and "unknown_api_key" in again.stderr


def test_b14_keys_cli_refuses_unknown_scopes_and_makes_platform_keys(practice: Any, process_env: Any,
                                                                     database_url: str) -> None:
    bad = _cli(process_env, database_url, "keys", "create", "--practice", str(practice.id), "--name", "x",
               "--scope", "invite,root")
    assert bad.returncode == 1 and "invalid_input" in bad.stderr
    platform = _cli(process_env, database_url, "keys", "create", "--platform", "--name", "platform",
                    "--scope", "staff", "--json")
    assert platform.returncode == 0, platform.stderr
    assert json.loads(platform.stdout)["practice_id"] is None


def test_p17_key_actions_are_audited_for_the_practice(practice: Any, api: Api) -> None:
    from engine.core.models import AuditEvent

    api.key(practice, "invite", name="intake")
    actions = [e.action for e in AuditEvent.select().where(AuditEvent.practice == practice.id)]
    assert "api_key_created" in actions
