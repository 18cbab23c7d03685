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
    """The time a file says (``CLOCK_OFFSET_FILE``), shared by separate processes.

    For tests and demos that run workers, schedulers or the CLI as separate processes. The file
    holds either a number of seconds added to the wall clock (the time runs on, shifted), or an
    ISO 8601 instant (the time stands still there, as a test's ``ManualClock`` does). Writing the
    file moves every process's "now" at once; it is re-read only when it changes.
    """

    def __init__(self, path: str) -> None:
        import os

        self._path = path
        self._stat = os.stat
        self._seen: tuple[int, int, int] | None = None
        self._offset = timedelta(0)
        self._fixed: datetime | None = None
        self._lock = threading.Lock()

    def _read(self) -> tuple[timedelta, datetime | None]:
        try:
            st = self._stat(self._path)
        except FileNotFoundError:
            return timedelta(0), None
        # The inode too: a rewrite (os.replace) within the file system's timestamp granularity
        # keeps the modification time but never the inode of the file it replaced.
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if seen != self._seen:
                with open(self._path) as f:
                    text = f.read().strip()
                try:
                    self._offset, self._fixed = timedelta(seconds=float(text or 0)), None
                except ValueError:
                    self._offset, self._fixed = timedelta(0), datetime.fromisoformat(text).astimezone(UTC)
                self._seen = seen
            return self._offset, self._fixed

    def now(self) -> datetime:
        offset, fixed = self._read()
        return fixed if fixed is not None else datetime.now(UTC) + offset

    @staticmethod
    def write(path: str, offset_s: float) -> None:
        """Set the offset every process reading ``path`` sees (atomically)."""
        FileOffsetClock._replace(path, repr(float(offset_s)))

    @staticmethod
    def write_fixed(path: str, when: datetime) -> None:
        """Stop the time of every process reading ``path`` at ``when`` (atomically)."""
        if when.tzinfo is None:
            raise ValueError("FileOffsetClock needs an aware datetime")
        FileOffsetClock._replace(path, when.isoformat())

    @staticmethod
    def _replace(path: str, text: str) -> None:
        import os

        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
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
