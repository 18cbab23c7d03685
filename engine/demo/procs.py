"""The demo's child processes: started in their own process groups, always stopped together.

Each child leads a new session, so a terminal's Ctrl-C reaches only the demo, which then stops
the children in order (SIGTERM, then SIGKILL to the whole group after a timeout). On Linux a child
also gets SIGTERM if the demo itself dies without cleaning up (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from engine.demo.view import show

#: Signals that stop the demo (Ctrl-C, ``kill``).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: the demo stops everything it started.

    A ``BaseException``, like ``KeyboardInterrupt``: library code that catches ``Exception``
    (an enqueue that logs and carries on) must not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT/SIGTERM raise ``Interrupted`` once, in the main thread; later ones are only noted.

    Raising once means a second Ctrl-C cannot cut the clean-up short; ``disarm()`` before the
    clean-up of a normal ending does the same for a first one.
    """

    def __init__(self) -> None:
        self.armed = True
        self.received: int | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if self.armed:
            self.armed = False
            raise Interrupted(signum)

    def disarm(self) -> None:
        self.armed = False

    def check(self) -> None:
        """Raise ``Interrupted`` if a stop signal came and was lost on the way (belt and braces)."""
        if self.received is not None:
            raise Interrupted(self.received)

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._previous.items():
            signal.signal(s, old)  # type: ignore[arg-type]


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back (they arrive on exit): a child is never started unrecorded."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _libc_prctl() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True).prctl if name else None
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def _in_child() -> None:
    # Runs between fork and exec. The parent blocks the stop signals while it forks and the
    # mask is inherited: unblock them, or the child could never be told to stop.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))  # type: ignore[operator]


@dataclass
class Child:
    """One started process, its log file and what it is called on screen."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def tail(path: Path, lines: int = 15) -> list[str]:
    """The last ``lines`` lines of a log file (empty if it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64_000))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


class Supervisor:
    """Starts the demo's children and stops every one of them, whatever happens."""

    def __init__(self, pid_file: Path) -> None:
        self.children: list[Child] = []
        self.pid_file = pid_file

    def start(self, name: str, argv: Sequence[str], *, log_path: Path, env: dict[str, str], cwd: Path) -> Child:
        """Start ``argv`` in a new session, output to ``log_path``; recorded in the pid file."""
        with signals_deferred(), open(log_path, "ab") as log:
            process = subprocess.Popen(
                list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_in_child,
            )
            child = Child(name, process, log_path)
            self.children.append(child)
            self._write_pid_file()
        return child

    def _write_pid_file(self) -> None:
        data = {c.name: c.pid for c in self.children}
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.pid_file)

    def dead(self) -> Child | None:
        """The first child that has exited, if any."""
        for child in self.children:
            if child.process.poll() is not None:
                return child
        return None

    def death_notice(self) -> list[str]:
        """Lines saying which child stopped early, with the end of its log; empty while all run."""
        child = self.dead()
        if child is None:
            return []
        lines = [f"invites demo: the {child.name} stopped unexpectedly (exit code {child.process.returncode}). "
                 f"Last lines of {show(child.log_path)}:"]
        return lines + [f"    {line}" for line in tail(child.log_path)]

    def stop_all(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every child, wait, SIGKILL what is left of its process group; reaps them all.

        SIGTERM goes to the group leader only: Dramatiq's main process passes it on to its worker
        process, and a worker process that gets it twice stops at once instead of finishing its
        step. The group gets it only when its leader is already gone (stray grandchildren).
        """
        for child in self.children:
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
            else:
                _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.pid, signal.SIGKILL)
                child.process.wait()
        # A group outlives its leader while a grandchild (Dramatiq's worker process) runs on.
        for child in self.children:
            while _group_alive(child.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _group_alive(child.pid):
                _signal_group(child.pid, signal.SIGKILL)
