"""The engine's one clock. Everything asks it for "now"; tests move it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Wall-clock time, aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to; shared safely by worker threads."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)
        if self._now.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        with self._lock:
            self._now += delta if delta is not None else timedelta(**kwargs)
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when


class FileOffsetClock:
    """Wall-clock time plus an offset in seconds read from a file (``CLOCK_OFFSET_FILE``).

    For tests and demos that run workers and schedulers as separate processes: writing a new
    offset into the file moves every process's "now" at once. The file is re-read only when
    its modification time changes.
    """

    def __init__(self, path: str) -> None:
        import os

        self._path = path
        self._stat = os.stat
        self._mtime_ns = -1
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def _read(self) -> timedelta:
        try:
            mtime_ns = self._stat(self._path).st_mtime_ns
        except FileNotFoundError:
            return timedelta(0)
        with self._lock:
            if mtime_ns != self._mtime_ns:
                with open(self._path) as f:
                    text = f.read().strip()
                self._offset = timedelta(seconds=float(text or 0))
                self._mtime_ns = mtime_ns
            return self._offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self._read()

    @staticmethod
    def write(path: str, offset_s: float) -> None:
        """Set the offset every process reading ``path`` sees (atomically)."""
        import os

        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(repr(float(offset_s)))
        os.replace(tmp, path)


_clock: Clock = SystemClock()


def now() -> datetime:
    """The engine's current time (aware UTC)."""
    return _clock.now()


def use_clock(clock: Clock) -> Clock:
    """Make ``clock`` the engine's clock; returns the previous one."""
    global _clock
    previous, _clock = _clock, clock
    return previous


def get_clock() -> Clock:
    return _clock
