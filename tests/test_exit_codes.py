"""Every exit code the README documents, from real processes.

``0`` done, ``1`` refused (a database without its schema among them), ``2`` bad usage, ``3`` a
service did not answer, ``141`` standard output closed early. A dead service is a free port
nobody listens on: refused at once, so each case is over in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_REDIS_URL
from tests.faults import ROOT, VENV_BIN, free_port
from tests.shell import run, user_env

NO_SCHEMA = "the database has no schema yet: run `invites db upgrade`"
#: The four ways to start the two long-running processes (README, "Running in production").
PROCESSES = ["invites worker -p 1 -t 1", "dramatiq worker -p 1 -t 1", "invites scheduler", "python scheduler.py"]


@pytest.fixture
def env(tmp_path: Path, redis_client) -> dict[str, str]:
    """A shell's environment with a migrated SQLite database and the tests' Redis."""
    values = user_env(tmp_path, TEST_REDIS_URL)
    upgraded = run("invites db upgrade", values)
    assert upgraded.returncode == 0, upgraded.stderr
    return values


def dead_broker() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def dead_database() -> str:
    return f"postgresql://invites:s3cret@127.0.0.1:{free_port()}/invites"


def started_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "not started:" in line]


# --- 3: a service did not answer ------------------------------------------------------------

@pytest.mark.parametrize("command", PROCESSES)
def test_a_process_exits_3_at_start_when_the_broker_does_not_answer(env, command):
    # Given a broker URL where nothing listens
    url = dead_broker()
    started = time.monotonic()
    # When the process starts
    result = run(command, {**env, "BROKER_URL": url})
    # Then it stops at once with 3 and says so in one line, instead of logging every 3 s
    assert result.returncode == 3, result.stderr[-2000:]
    assert time.monotonic() - started < 30
    [line] = started_lines(result.stderr) or [result.stderr.strip()]
    assert f"did not answer: the broker at {url}" in line


@pytest.mark.parametrize("command", PROCESSES)
def test_a_process_exits_3_at_start_when_the_database_does_not_answer(env, command):
    url = dead_database()
    result = run(command, {**env, "DATABASE_URL": url})
    assert result.returncode == 3, result.stderr[-2000:]
    [line] = started_lines(result.stderr) or [result.stderr.strip()]
    assert "did not answer: the database at postgresql://127.0.0.1:" in line
    assert "s3cret" not in result.stderr  # a URL in a log line never shows its password


def test_invites_worker_says_it_in_exactly_one_line(env):
    result = run("invites worker --processes 2 --threads 8", {**env, "BROKER_URL": dead_broker()})
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("invites: a service did not answer: the broker at redis://127.0.0.1:")


def test_ops_status_exits_3_with_the_broker_down_after_printing_what_it_knows(env):
    down = {**env, "BROKER_URL": dead_broker()}
    text = run("invites ops status", down)
    assert text.returncode == 3
    assert "Queues: the broker did not answer" in text.stdout and "Invitations: queued 0" in text.stdout
    assert text.stderr.strip().splitlines() == [text.stderr.strip()]
    assert text.stderr.startswith("invites: a service did not answer: the broker (ConnectionError:")
    as_json = run("invites ops status --json", down)
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["broker_error"].startswith("ConnectionError")


@pytest.mark.parametrize("command", ["invites ops status", "invites status 1 1", "invites sweep"])
def test_commands_exit_3_with_the_database_down(env, command):
    result = run(command, {**env, "DATABASE_URL": dead_database()})
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("invites: a service did not answer: OperationalError: connection to server")
    assert len(result.stderr.strip().splitlines()) == 1


def test_sweep_exits_3_when_the_broker_took_none_of_its_nudges(env, tmp_path):
    # Given an invitation written while the broker was down, its nudge lost
    run("invites practice create Clinic", env)
    run("invites staff add 1 Ada ada@clinic.test --role admin", env)
    down = {**env, "BROKER_URL": dead_broker()}
    written = run("invites client create 1 Rosa --email rosa@example.test --consent --invite --by staff:1", down)
    assert written.returncode == 0, written.stderr  # written: the sweep sends it later
    # When a sweep runs after the lease, with the broker still down
    offset = tmp_path / "offset"
    offset.write_text("3600")
    result = run("invites sweep", {**down, "CLOCK_OFFSET_FILE": str(offset)})
    # Then it claimed the invitation, could not nudge it, and says a service did not answer
    assert result.returncode == 3
    assert "claimed 1, enqueued 0" in result.stdout
    assert "invites: a service did not answer: the broker took 0 of 1 nudges" in result.stderr


# --- 1: a database without the schema ---------------------------------------------------------

@pytest.mark.parametrize("command", ["invites ops status", "invites status 1 1", "invites sweep",
                                     "invites practice create Clinic"])
def test_commands_on_a_database_without_schema_say_to_run_db_upgrade(env, tmp_path, command):
    bare = {**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'bare.db'}"}
    result = run(command, bare)
    assert result.returncode == 1
    assert result.stderr == f"invites: refused (schema_not_upgraded): {NO_SCHEMA}\n"
    assert run("invites db upgrade", bare).returncode == 0
    assert run("invites ops status --json", bare).returncode == 0


@pytest.mark.parametrize("command", PROCESSES)
def test_a_process_exits_1_at_start_on_a_database_without_schema(env, tmp_path, command):
    result = run(command, {**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'bare.db'}"})
    assert result.returncode == 1, result.stderr[-2000:]
    assert NO_SCHEMA in result.stderr


def test_a_schema_behind_the_release_names_both_migrations(env, tmp_path):
    import sqlite3

    path = tmp_path / "behind.db"
    behind = {**env, "DATABASE_URL": f"sqlite:///{path}"}
    assert run("invites db upgrade", behind).returncode == 0
    with sqlite3.connect(path) as conn:
        latest = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        conn.execute("DELETE FROM schema_version WHERE version = ?", (latest,))
    result = run("invites ops status", behind)
    assert result.returncode == 1
    assert f"is at migration {latest - 1}, this release needs {latest}: run `invites db upgrade`" in result.stderr


# --- 2: bad usage -----------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["invites no-such-command", "invites ops status --no-such-option",
                                     "invites scheduler --no-such-option", "invites worker --no-such-option"])
def test_bad_usage_exits_2(env, command):
    result = run(command, env)
    assert result.returncode == 2
    assert "usage:" in result.stderr


# --- 141: standard output closed early --------------------------------------------------------

@pytest.mark.parametrize("args", [["ops", "status"], ["ops", "status", "--json"], ["diagram"]])
def test_a_reader_that_went_away_is_a_quiet_141(env, args):
    # Given standard output is a pipe whose reader has already gone
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([str(VENV_BIN / "invites"), *args], cwd=ROOT, env=env, stdout=write_end,
                                stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write_end)
    # Then the command stops quietly, with what a shell reports for SIGPIPE: no "service did not answer"
    assert result.returncode == 141
    assert result.stderr == b""


def test_ops_status_piped_into_head_as_the_docs_show(env):
    result = run("invites ops status | head -1; exit ${PIPESTATUS[0]}", env)
    assert result.returncode in (0, 141)  # 0 when head read it all before closing
    assert result.stdout.startswith("Portal Invites at ")
    assert result.stderr == ""
