"""``./dev`` on a machine that lacks things: it says what is missing, makes a half-made .venv
again, and stops the private redis-server it started when its command ends, Ctrl-C included.

Each test runs a throwaway copy of the script. The machine's Redis is played "missing" by
pointing the script's probe at a closed port (``DEV_REDIS_PORT``), and the private one gets a
free port of its own, so these tests never touch the Redis others use.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults import ROOT, free_port

needs_redis_server = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy2(ROOT / "dev", tmp_path / "dev")
    return tmp_path


def script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def dev(project: Path, *args: str, env: dict[str, str] | None = None, **more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(project / "dev"), *args], cwd=project, env={**(env or os.environ), **more},
                          capture_output=True, text=True, timeout=60)


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def ready_venv(project: Path) -> Path:
    """A .venv that needs no install: its python is the one running this suite."""
    script(project / ".venv" / "bin" / "python", f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (project / ".venv" / ".installed").touch()
    return project


@pytest.fixture
def no_machine_redis() -> dict[str, str]:
    """The environment of a machine without Redis, with a free port for the private one."""
    env = {k: v for k, v in os.environ.items() if k != "TEST_REDIS_URL"}
    env.update(DEV_REDIS_PORT=str(free_port()), DEV_PRIVATE_REDIS_PORT=str(free_port()))
    return env


def test_help_lists_the_commands_and_nothing_of_the_script(project):
    shown = dev(project, "help")
    assert shown.returncode == 0
    for command in ("./dev demo", "./dev test", "./dev stop"):
        assert command in shown.stdout
    assert "set -" not in shown.stdout and "#" not in shown.stdout
    unknown = dev(project, "tset")
    assert unknown.returncode == 2
    assert "unknown command 'tset'" in unknown.stderr and "./dev test" in unknown.stderr


def test_a_python_older_than_3_11_is_refused_with_what_to_do(project):
    old = script(project / "bin" / "python3.9", "#!/bin/sh\n"
                 "# Plays Python 3.9: fails the version check, tells its version when asked.\n"
                 'case "$*" in *python_version*) echo 3.9.2 ;; *) exit 1 ;; esac\n')
    refused = dev(project, "test", PYTHON=str(old))
    assert refused.returncode == 3
    assert "is 3.9.2" in refused.stderr and "needs Python 3.11 or newer" in refused.stderr
    missing = dev(project, "test", PYTHON="/nowhere/python3")
    assert missing.returncode == 3 and "not found" in missing.stderr
    assert not (project / ".venv").exists()


def test_a_python_without_ensurepip_is_explained(project):
    # Given a python3 that behaves like Debian's without python3-venv
    debian = script(project / "bin" / "python3", "#!/bin/sh\n"
                    'if [ "$1" = -m ] && [ "$2" = venv ]; then\n'
                    f'    "{sys.executable}" -m venv --without-pip "$3"\n'
                    '    echo "The virtual environment was not created successfully because ensurepip is not'
                    ' available." >&2\n'
                    "    exit 1\n"
                    "fi\n"
                    f'exec "{sys.executable}" "$@"\n')
    # When ./dev needs a .venv
    made = dev(project, "test", PYTHON=str(debian))
    # Then it says what to install, and leaves no half-made .venv for the next run to trip on
    assert made.returncode == 3
    assert "apt-get install python3-venv" in made.stderr
    assert not (project / ".venv").exists()


def test_a_half_made_venv_is_made_again_with_pip(project):
    # Given a .venv without pip, as `python3 -m venv` leaves it where ensurepip is missing
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(project / ".venv")], check=True)
    heal = ["bash", "-c", "source ./dev && heal_venv"]
    # When ./dev looks at it (its venv step alone: installing the project is for real runs)
    healed = subprocess.run(heal, cwd=project, env={**os.environ, "PYTHON": sys.executable},
                            capture_output=True, text=True, timeout=120)
    # Then it says why, and makes it again with pip
    assert healed.returncode == 0, healed.stderr
    assert "it has no pip" in healed.stdout
    subprocess.run([str(project / ".venv" / "bin" / "python"), "-c", "import pip"], check=True)
    again = subprocess.run(heal, cwd=project, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == ""


@needs_redis_server
def test_the_private_redis_serves_the_run_and_stops_when_it_ends(ready_venv, no_machine_redis):
    port = int(no_machine_redis["DEV_PRIVATE_REDIS_PORT"])
    (ready_venv / "test_uses_it.py").write_text(
        "import os, socket\n"
        "def test_uses_it():\n"
        f"    assert os.environ['TEST_REDIS_URL'] == 'redis://127.0.0.1:{port}/15'\n"
        f"    with socket.create_connection(('127.0.0.1', {port})) as conn:\n"
        "        conn.sendall(b'PING\\r\\n')\n"
        "        assert conn.recv(16).startswith(b'+PONG')\n"
    )
    ran = dev(ready_venv, "test", "-q", "-p", "no:cacheprovider", "test_uses_it.py", env=no_machine_redis)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"starting a private redis-server on 127.0.0.1:{port}" in ran.stdout
    assert "stopped the private redis-server" in ran.stderr
    assert not answers(port)
    assert not (ready_venv / "var" / "redis" / "redis.pid").exists()
    # A failing command's exit code comes through, and the Redis still stops
    usage_error = dev(ready_venv, "test", "--no-such-option", env=no_machine_redis)
    assert usage_error.returncode == 4
    assert not answers(port)


@needs_redis_server
def test_ctrl_c_stops_the_shared_private_redis_and_ends_as_interrupted(ready_venv, no_machine_redis):
    port = int(no_machine_redis["DEV_PRIVATE_REDIS_PORT"])
    started = ready_venv / "started"
    (ready_venv / "test_waits.py").write_text(
        f"import pathlib, time\ndef test_waits():\n    pathlib.Path({str(started)!r}).touch()\n    time.sleep(60)\n"
    )
    # A terminal's Ctrl-C goes to the whole foreground process group: the script and pytest
    run = subprocess.Popen([str(ready_venv / "dev"), "test", "-q", "-p", "no:cacheprovider", "test_waits.py"],
                           cwd=ready_venv, env=no_machine_redis, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert run.poll() is None and time.monotonic() < deadline, "the test run did not start"
            time.sleep(0.05)
        assert answers(port)
        # A second run meanwhile uses the same Redis, and leaves it to the first when it ends
        second = dev(ready_venv, "test", "--version", env=no_machine_redis)
        assert second.returncode == 0
        assert "using the private redis-server already" in second.stdout
        assert "another ./dev run is using it" in second.stderr
        assert answers(port)
        os.killpg(run.pid, signal.SIGINT)
        _, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == -signal.SIGINT
    assert "stopped the private redis-server" in err
    assert not answers(port)


@needs_redis_server
def test_dev_stop_stops_a_redis_left_behind_and_nothing_else(project):
    # Given a private redis-server left running (its ./dev was killed with SIGKILL, say)
    port, folder = free_port(), project / "var" / "redis"
    folder.mkdir(parents=True)
    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
                    "--save", "", "--appendonly", "no", "--dir", str(folder),
                    "--pidfile", str(folder / "redis.pid"), "--logfile", str(folder / "redis.log")], check=True)
    deadline = time.monotonic() + 10
    while not (answers(port) and (folder / "redis.pid").exists()):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    # When ./dev stop runs, twice
    first, second = dev(project, "stop"), dev(project, "stop")
    # Then the first stops it and the second finds nothing to do
    assert (first.returncode, second.returncode) == (0, 0)
    assert "stopped the private redis-server" in first.stdout
    assert not answers(port)
    assert "no private redis-server to stop" in second.stdout
    # And a pidfile whose number now belongs to another program leaves that program alone
    other = subprocess.Popen(["sleep", "60"])
    try:
        (folder / "redis.pid").write_text(f"{other.pid}\n")
        stale = dev(project, "stop")
        assert stale.returncode == 0 and "no private redis-server to stop" in stale.stdout
        assert other.poll() is None
        assert not (folder / "redis.pid").exists()
    finally:
        other.kill()
        other.wait()
