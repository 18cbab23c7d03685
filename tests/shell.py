"""Commands as a person types them: a line run by bash in the checkout, with the venv on PATH.

For the tests that hold the documentation to its word (``test_commands.py``) and the exit codes
(``test_exit_codes.py``): the same ``invites``, ``dramatiq`` and ``python`` a user gets.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.faults import ROOT, VENV_BIN


def user_env(tmp_path: Path, broker_url: str, **extra: str) -> dict[str, str]:
    """The environment of a shell on this machine: a SQLite file, a broker, an outbox folder."""
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'invites.db'}",
        "BROKER_URL": broker_url,
        "MAIL_URL": f"file://{tmp_path / 'outbox'}",
        **extra,
    }
    for name in ("INVITES_ACTOR", "CLOCK_OFFSET_FILE", "WORKER_PROMETHEUS"):
        if name not in extra:
            env.pop(name, None)
    return env


def run(
    line: str, env: dict[str, str], *, stdin: str | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``line`` in bash from the checkout and wait for it."""
    return subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, input=stdin, capture_output=True, text=True,
                          timeout=timeout_s)


@contextmanager
def running(line: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``line`` (bash ``exec``s it, so the pid is the command's own); kill its group at the end."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, *, timeout_s: float = 60) -> int:
    """``sig`` to the main process only, as systemd's ``KillMode=mixed`` does; its exit code."""
    proc.send_signal(sig)
    return proc.wait(timeout=timeout_s)


def wait_while_running(condition: Callable[[], object], proc: subprocess.Popen[bytes], log: Path, what: str,
                       *, timeout_s: float = 60) -> None:
    """Poll ``condition`` until true; fail at once (with the log's end) if ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
