"""``invites demo`` (the README's first command), run as a person runs it: a real subprocess that
starts a real worker and scheduler, on the tests' Redis database and a folder of its own."""

from __future__ import annotations

import email
import email.policy
import email.utils
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import TEST_REDIS_URL

ROOT = Path(__file__).parents[1]
PRACTICE = "Happy Paws Veterinary Clinic"


def demo(folder: Path, **env: str) -> subprocess.Popen[str]:
    """Start ``invites demo --dir folder`` in its own session, as a terminal would run it."""
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "demo", "--dir", str(folder)],
        cwd=ROOT, env={**os.environ, "BROKER_URL": TEST_REDIS_URL, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout_s: float) -> str:
    try:
        out, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"the demo did not finish within {timeout_s} s:\n{out}")
    return out


def alive_in_sessions(sessions: set[int]) -> list[str]:
    """Running processes (not zombies) whose session is one of ``sessions``: read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        state, session = rest[0], int(rest[3])
        if session in sessions and state != "Z":
            found.append(f"{entry.name} {comm} {state}")
    return found


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def outbox_by_recipient(outbox: Path) -> dict[str, list[email.message.EmailMessage]]:
    found: dict[str, list[email.message.EmailMessage]] = defaultdict(list)
    for path in outbox.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found[message["To"].addresses[0].addr_spec].append(message)
    for messages in found.values():
        messages.sort(key=lambda m: email.utils.parsedate_to_datetime(m["Date"]))
    return found


def test_demo_plays_invitations_reminders_sign_ins_and_expiry(tmp_path, redis_client):
    folder = tmp_path / "demo"
    started = time.monotonic()
    out = finish(demo(folder), timeout_s=150)
    took_s = time.monotonic() - started
    assert "All 5 invitations have ended" in out, out
    assert "signed_in" in out and "expired" in out
    assert "no_consent" in out  # the client without consent is refused, with the engine's code
    assert "Stopped every process the demo started." in out
    assert took_s < 90, f"the demo took {took_s:.0f} s"

    mail = outbox_by_recipient(folder / "outbox")
    subjects = {to: [m["Subject"] for m in messages] for to, messages in mail.items()}
    invitation = f"Your client portal at {PRACTICE}"
    reminder = f"Reminder: your client portal at {PRACTICE} is waiting"
    # Nobody reacted: the invitation and both reminders (then expiry).
    for silent in ("olivia@example.com", "tom@example.com", "grace@example.com"):
        assert subjects[silent] == [invitation, reminder, reminder], silent
    # Redeemed the first reminder's link: nothing after it. Signed in at once: no reminder at all.
    assert subjects["marcus@example.com"] == [invitation, reminder]
    assert subjects["priya@example.com"] == [invitation]
    assert "daniel@example.com" not in subjects
    # The emails carry the practice's name and a working-looking set-password link.
    text = mail["marcus@example.com"][1].get_body(preferencelist=("plain",)).get_content()
    assert "/set-password?token=" in text

    children = json.loads((folder / "pids.json").read_text())
    assert set(children) == {"worker", "scheduler"}
    assert alive_in_sessions(set(children.values())) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_demo_stops_every_process_it_started_on_a_signal(tmp_path, redis_client, signum):
    folder = tmp_path / "demo"
    process = demo(folder)
    # Given the demo in full swing: worker and scheduler up, the first invitations out.
    wait_for(lambda: any((folder / "outbox").glob("*.eml")) or process.poll() is not None, 60, "a first email")
    assert process.poll() is None, finish(process, 10)
    children = json.loads((folder / "pids.json").read_text())
    sessions = set(children.values())
    running = alive_in_sessions(sessions)
    assert len(running) >= 3, running  # the scheduler, Dramatiq's main process and its worker process
    # When Ctrl-C reaches the terminal's foreground group (or SIGTERM reaches the demo)
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    out = finish(process, timeout_s=30)
    # Then it exits 130 and leaves nothing running behind it
    assert process.returncode == 130, out
    assert "Interrupted" in out and "Stopped every process the demo started." in out
    assert alive_in_sessions(sessions) == []


def test_demo_says_when_its_worker_dies_and_exits_non_zero(tmp_path, redis_client):
    folder = tmp_path / "demo"
    process = demo(folder)
    wait_for(lambda: any((folder / "outbox").glob("*.eml")) or process.poll() is not None, 60, "a first email")
    children = json.loads((folder / "pids.json").read_text())
    os.killpg(children["worker"], signal.SIGKILL)
    out = finish(process, timeout_s=30)
    assert process.returncode == 1, out
    assert "the worker stopped unexpectedly" in out
    assert "Last lines of" in out
    assert alive_in_sessions(set(children.values())) == []


def test_demo_refuses_a_folder_another_demo_is_using(tmp_path):
    folder = tmp_path / "demo"
    folder.mkdir()
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        process = demo(folder)
        out = finish(process, timeout_s=30)
    assert process.returncode == 1, out
    assert "another demo is running" in out


def test_demo_without_a_broker_says_so_and_starts_nothing(tmp_path):
    folder = tmp_path / "demo"
    process = demo(folder, BROKER_URL="redis://127.0.0.1:1/0")
    out = finish(process, timeout_s=30)
    assert process.returncode == 3, out
    assert "does not answer" in out
    assert not (folder / "pids.json").exists()
