"""``invites demo``: a demo practice played through a compressed schedule, on the real parts.

It uses its own folder (``var/demo/``: a fresh SQLite database, an outbox of ``.eml`` files,
logs), starts a real Dramatiq worker and the real scheduler as child processes, invites six
clients through the Python API and shows the workflows live until every invitation has ended:
invitations sent, reminders, a sign-in that stops the reminders, a link redeemed from an email,
expiries. Seconds stand in for days. Ctrl-C stops every process it started.

Files beside this one: ``story.py`` (the practice, the clients, the live loop), ``report.py``
(the closing summary), ``view.py`` (the terminal), ``procs.py`` (child processes).
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from engine.demo.procs import Interrupted, StopSignals, Supervisor, tail
from engine.demo.report import closing_summary
from engine.demo.story import EXPECTED, LIFETIME_S, PRACTICE_NAME, REMINDERS_S, TIME_ZONE, play
from engine.demo.view import Screen, redact, show

#: Settings of every demo process: a sweep a second, and a short lease so a lost step is seen soon.
DEMO_ENV = {"SWEEP_INTERVAL_S": "1", "STEP_LEASE_S": "10"}
WORKER_READY_TIMEOUT_S = 60
#: Exit codes: done; something went wrong (the output says what); no broker; Ctrl-C or SIGTERM.
OK, FAILED, UNAVAILABLE, INTERRUPTED = 0, 1, 3, 130


def register(subparsers: Any) -> None:
    """Add ``invites demo`` to the CLI."""
    p = subparsers.add_parser(
        "demo",
        help="watch a demo practice play out on a compressed schedule (about 40 s)",
        description="Start a worker and a scheduler, invite a demo practice's clients, and show the "
        "invitations live: sent, reminded, signed in, expired. Seconds stand in for days. "
        "Ctrl-C stops everything it started. Uses BROKER_URL; the database and the outbox are its own.",
    )
    p.add_argument("--dir", default="var/demo", type=Path,
                   help="the demo's folder: database, outbox, logs; emptied at start (default var/demo)")
    # The demo boots the engine itself, with its own settings, before anything else does.
    p.set_defaults(func=_command, needs_db=False, needs_broker=False)


def _command(args: argparse.Namespace) -> None:
    code = run(args.dir)
    if code != OK:
        raise SystemExit(code)


def run(folder: Path, screen: Screen | None = None) -> int:
    """Play the demo in ``folder``; returns the exit code (0, 1, 3, or 130 when interrupted)."""
    screen = screen or Screen()
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / ".lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        screen.say(f"invites demo: another demo is running in {show(folder)}; stop it first")
        return FAILED
    supervisor = Supervisor(folder / "pids.json")
    code = FAILED
    with lock, StopSignals() as signals:
        try:
            code = _run(folder, screen, supervisor, signals)
            signals.disarm()
        except Interrupted as exc:
            screen.say(f"\nInterrupted ({exc}).")
            code = INTERRUPTED
        finally:
            signals.disarm()
            screen.end()
            if supervisor.children:
                screen.say("Stopping the worker and the scheduler…")
                supervisor.stop_all()
                screen.say("Stopped every process the demo started.")
        if signals.received is not None:
            code = INTERRUPTED
    return code


def demo_env(folder: Path) -> dict[str, str]:
    """The environment of every demo process: its own database and outbox, the caller's broker."""
    env = {**os.environ, **DEMO_ENV}
    env["DATABASE_URL"] = f"sqlite:///{folder / 'invites.db'}"
    env["MAIL_URL"] = f"file://{folder / 'outbox'}"
    env["PYTHONUNBUFFERED"] = "1"  # logs reach the files as they happen
    env.pop("CLOCK_OFFSET_FILE", None)  # real time: the demo is about watching it pass
    return env


def _reset(folder: Path) -> None:
    """Start from nothing: no database, no emails, no logs of an earlier run."""
    for path in [*folder.glob("invites.db*"), *(folder / name for name in ("worker.log", "scheduler.log",
                                                                           "demo.log", "pids.json"))]:
        path.unlink(missing_ok=True)
    shutil.rmtree(folder / "outbox", ignore_errors=True)
    (folder / "outbox").mkdir()


def _log_to(path: Path) -> None:
    # The engine's own log lines would tear the live table apart: they go to a file.
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _run(folder: Path, screen: Screen, supervisor: Supervisor, signals: StopSignals) -> int:
    from engine.core.db import connection
    from engine.core.runtime import boot
    from engine.core.schema import upgrade
    from engine.core.settings import Settings

    _reset(folder)
    _log_to(folder / "demo.log")
    env = demo_env(folder)
    settings = boot(Settings.from_env(env))  # the children read the same environment
    screen.say(f"Portal Invites demo: {PRACTICE_NAME} ({TIME_ZONE}). Ctrl-C stops it at any time.")
    screen.say(f"  compressed schedule (seconds for days): reminders at {REMINDERS_S[0]} s and {REMINDERS_S[1]} s, "
               f"expiry at {LIFETIME_S} s, any hour")
    screen.say(f"  database {show(folder / 'invites.db')} · outbox {show(folder / 'outbox')}/ · "
               f"broker {redact(settings.broker_url)}")
    problem = _broker_problem()
    if problem:
        screen.say(f"invites demo: the broker at {redact(settings.broker_url)} does not answer ({problem}).")
        screen.say("  Start Redis (./dev demo starts one for you) or point BROKER_URL at one.")
        return UNAVAILABLE
    with connection():
        upgrade()
        _start_children(folder, screen, supervisor, env)
        if not _wait_until_ready(screen, supervisor, folder / "worker.log", signals):
            return FAILED
        played = play(folder, screen, supervisor, signals)
        if isinstance(played, int):
            return played
        return closing_summary(screen, practice_id=played.practice_id, players=played.players,
                               started_at=played.started_at, elapsed_s=played.elapsed_s, folder=folder,
                               expected=EXPECTED, actor=played.actor)


def _broker_problem() -> str:
    """Why the broker cannot be reached, or "" (checked up front: the worker would only log it)."""
    from engine.core.runtime import broker

    client = getattr(broker(), "client", None)  # Redis; RabbitMQ connects on first use
    if client is None:
        return ""
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any Redis error means the same thing here
        return f"{type(exc).__name__}: {exc}"
    return ""


def _start_children(folder: Path, screen: Screen, supervisor: Supervisor, env: dict[str, str]) -> None:
    spec = importlib.util.find_spec("scheduler")  # scheduler.py and worker.py: the checkout, or site-packages
    if spec is None or spec.origin is None:
        raise FileNotFoundError("scheduler.py is not installed with the engine")
    root = Path(spec.origin).parent
    dramatiq = Path(sys.executable).with_name("dramatiq")
    command = [str(dramatiq)] if dramatiq.exists() else [sys.executable, "-m", "dramatiq"]
    # A short shutdown timeout: Ctrl-C should not wait minutes for an in-flight step.
    worker = supervisor.start(
        "worker", [*command, "worker", "--processes", "1", "--threads", "4", "--worker-shutdown-timeout", "5000"],
        log_path=folder / "worker.log", env=env, cwd=root)
    scheduler = supervisor.start("scheduler", [sys.executable, spec.origin], log_path=folder / "scheduler.log",
                                 env=env, cwd=root)
    screen.say(f"  worker     pid {worker.pid:<7} 1 process, 4 threads     log {show(worker.log_path)}")
    screen.say(f"  scheduler  pid {scheduler.pid:<7} a sweep every {DEMO_ENV['SWEEP_INTERVAL_S']} s      "
               f"log {show(scheduler.log_path)}")


def _wait_until_ready(screen: Screen, supervisor: Supervisor, log: Path, signals: StopSignals) -> bool:
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        signals.check()
        if death := supervisor.death_notice():
            for line in death:
                screen.say(line)
            return False
        if any("ready for action" in line for line in tail(log, 50)):
            screen.say("  worker ready.")
            return True
        time.sleep(0.1)
    screen.say(f"invites demo: the worker did not get ready within {WORKER_READY_TIMEOUT_S} s. "
               f"Last lines of {show(log)}:")
    for line in tail(log):
        screen.say(f"    {line}")
    return False
