"""The commands the README, docs/ and deploy/ show, run as written.

The process commands are read out of those files, so a test fails when a document names a
command that does not start, or a test would have to be changed to follow a document.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import signal
import urllib.request
from pathlib import Path

import pytest

from engine.cli.main import main
from engine.core.heartbeat import SCHEDULER_PREFIX, WORKER_PREFIX
from tests.conftest import TEST_REDIS_URL
from tests.faults import ROOT, VENV_BIN
from tests.shell import run, running, stop, user_env, wait_while_running

README = (ROOT / "README.md").read_text()


# --- every command of the README's table exists, with the options it shows -------------------

def readme_commands() -> list[tuple[list[str], list[str]]]:
    """(command path, options) for each command the README's CLI table shows."""
    found = []
    for row in re.findall(r"^\| (`invites .*?) \|", README, flags=re.M):
        spans = re.findall(r"`([^`]+)`", row)
        first = spans[0].split()
        # `invites resend`, `disable`, … : the later spans are more subcommands of `invites`
        heads = [first] + [["invites", s] for s in spans[1:] if re.fullmatch(r"[a-z-]+", s)]
        heads += [span.split() for span in spans[1:] if span.startswith("invites ")]
        for words in heads:
            path: list[str] = []
            for word in words[1:]:
                if not re.fullmatch(r"[a-z-]+(\\?\|[a-z-]+)*", word):
                    break
                path.append(word)
            options = re.findall(r"(--[a-z][a-z-]+)", " ".join(words))
            for alternative in _alternatives(path):
                found.append((alternative, options))
    return found


def _alternatives(path: list[str]) -> list[list[str]]:
    """``portal on|off`` → ``portal on``, ``portal off``."""
    out: list[list[str]] = [[]]
    for word in path:
        out = [prefix + [choice] for prefix in out for choice in word.replace("\\", "").split("|")]
    return out


def test_the_readme_table_is_read():
    paths = [" ".join(p) for p, _ in readme_commands()]
    assert {"db upgrade", "ops dead-letters purge", "portal widget", "worker", "scheduler", "resend"} <= set(paths)


@pytest.mark.parametrize(("path", "options"), readme_commands(), ids=lambda v: " ".join(v) if v else "-")
def test_every_command_in_the_readme_exists_with_its_options(path, options, capsys):
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert [o for o in options if o not in shown and path != ["worker"]] == []


# --- the processes, as README, docs/ and deploy/ start them ---------------------------------

def documented_process_commands() -> list[tuple[str, str]]:
    """(where, command line) of every worker and scheduler command in the docs and deploy/."""
    found: list[tuple[str, str]] = []
    production = README.split("## Running in production", 1)[1].split("```", 2)[1]
    for line in production.splitlines()[1:]:
        for part in line.replace("# or:", "\n").splitlines():
            command = part.split("#")[0].strip()
            if command and "db upgrade" not in command:
                found.append(("README", command))
    operations = (ROOT / "docs" / "operations.md").read_text()
    found += [("docs/operations.md", c) for c in re.findall(r"^(invites worker[^\n`]*)$", operations, flags=re.M)]
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    for command in re.findall(r"^\| (?:worker|scheduler) \| `([^`]+)`", deploy, flags=re.M):
        found.append(("docs/deploy.md", command.replace("--processes P", "--processes 1")))
    for line in (ROOT / "deploy" / "Procfile").read_text().splitlines():
        if re.match(r"^(worker|scheduler): ", line):
            found.append(("deploy/Procfile", line.split(": ", 1)[1]))
    for unit in sorted((ROOT / "deploy").glob("*.service")):
        exec_start = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", unit.read_text(), flags=re.M)
        assert exec_start, unit
        command = " ".join(exec_start.group(1).replace("\\\n", " ").split())
        found.append((f"deploy/{unit.name}", command.replace("/opt/portal-invites/.venv/bin/", f"{VENV_BIN}/")))
    # The issue's own spelling: options after `--` are still Dramatiq's.
    found.append(("invites worker --help", "invites worker -- --processes 1 --threads 2"))
    unique: dict[str, str] = {}
    for where, command in found:
        unique.setdefault(command, where)
    return [(where, command) for command, where in unique.items()]


def deploy_settings() -> dict[str, str]:
    """The WORKER_* values of deploy/invites.env.example, as systemd and a Procfile platform read them."""
    text = (ROOT / "deploy" / "invites.env.example").read_text()
    return dict(re.findall(r"^(WORKER_[A-Z_]+)=(\S+)$", text, flags=re.M))


def test_the_documents_are_read():
    where = {w for w, _ in documented_process_commands()}
    assert {"README", "docs/operations.md", "docs/deploy.md", "deploy/Procfile",
            "deploy/invites-worker@.service", "deploy/invites-scheduler.service"} <= where


@pytest.mark.parametrize(("where", "command"), documented_process_commands(), ids=lambda v: v)
def test_each_documented_process_command_starts_and_stops_with_0(where, command, tmp_path, redis_client):
    # Given a migrated database, and the settings deploy/ gives the processes
    env = user_env(tmp_path, TEST_REDIS_URL, **deploy_settings())
    assert run("invites db upgrade", env).returncode == 0
    redis_client.flushdb()
    prefix = SCHEDULER_PREFIX if "scheduler" in command else WORKER_PREFIX
    log = tmp_path / "process.log"
    # When the command runs as written
    with running(command, env, log) as proc:
        # Then it comes up (its heartbeat appears) and a SIGTERM stops it cleanly
        wait_while_running(lambda: list(redis_client.scan_iter(match=prefix + "*")), proc, log, "a heartbeat")
        assert stop(proc) == 0, log.read_text()[-3000:]
    redis_client.flushdb()


# --- a practice's story, through the README's commands ----------------------------------------

def test_the_readme_commands_tell_a_whole_story(tmp_path, redis_client):
    env = user_env(tmp_path, TEST_REDIS_URL)

    def ok(line: str, stdin: str | None = None) -> str:
        result = run(line, env, stdin=stdin)
        assert result.returncode == 0, f"{line}: {result.stderr}"
        return result.stdout

    ok("invites --help")
    ok("invites db upgrade")
    ok("invites practice create 'Happy Paws' --time-zone Europe/London --reminders 3d,7d --lifetime 14d "
       "--window 09:00-18:00")
    practice = json.loads(ok("invites practice create 'Any Hour Vets' --window any --json"))["practice_id"]
    admin = json.loads(ok(f"invites staff add {practice} Ada ada@vets.test --role admin --json"))["actor"]
    rosa = json.loads(ok(f"invites client create {practice} Rosa --email rosa@example.test --consent --invite "
                         f"--by {admin} --json"))["client_id"]
    bo = json.loads(ok(f"invites client create {practice} Bo --email bo@example.test --consent --by {admin} "
                       "--json"))["client_id"]
    ok(f"invites invite {practice} {bo} --message 'See you soon' --key intake-7 --by {admin}")

    # The worker, started as the README shows, sends both invitations.
    log, outbox = tmp_path / "worker.log", tmp_path / "outbox"
    with running("invites worker --processes 1 --threads 2", env, log) as worker:
        wait_while_running(lambda: len(list(outbox.glob("*.eml"))) >= 2, worker, log, "two emails")
        assert stop(worker) == 0
    token = _token_for("rosa@example.test", outbox)

    ok(f"invites token verify {practice} {token}")
    ok(f"invites token redeem {practice} {token}", stdin="correct horse battery\n")
    ok(f"invites sign-in {practice} {bo}")
    assert json.loads(ok(f"invites status {practice} {rosa} --json"))["status"] == "signed_in"
    ok(f"invites timeline {practice} --client {rosa}")
    ok(f"invites timeline {practice} --invitation 1 --json")
    ok("invites sweep")
    ok("invites diagram")
    assert json.loads(ok("invites ops status --json"))["invitations"]["signed_in"] == 2
    assert ok("invites ops dead-letters list").strip() == "No dead letters."
    ok("invites ops dead-letters requeue --all")
    ok("invites ops dead-letters purge")

    # `invites ops serve --port 0` serves /api/status until Ctrl-C.
    log = tmp_path / "serve.log"
    with running("invites ops serve --port 0", env, log) as server:
        wait_while_running(lambda: "status page on http" in log.read_text(), server, log, "the address")
        url = re.search(r"(http://\S+/) ", log.read_text()).group(1)  # type: ignore[union-attr]
        with urllib.request.urlopen(url + "api/status", timeout=10) as answer:
            assert answer.status == 200
        assert stop(server, signal.SIGINT) == 0  # Ctrl-C
    redis_client.flushdb()


def _token_for(address: str, outbox: Path) -> str:
    for path in outbox.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if address in str(message["To"]):
            text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
            return re.search(r"set-password\?token=([A-Za-z0-9_-]+)", text).group(1)  # type: ignore[union-attr]
    raise AssertionError(f"no email to {address} in {outbox}")

