"""What the demo shows: a live table redrawn in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

#: States no invitation leaves (kept here so the view needs no database import).
FINAL_STATES = frozenset({"signed_in", "expired", "revoked", "failed"})

_STATE_AT = 2 + 16 + 21  # where the state column starts in a table line
_COLOURS = {"signed_in": "32", "expired": "2", "reminded": "33", "sent": "36", "failed": "31", "revoked": "31"}


@dataclass(frozen=True)
class Row:
    """One client's line of the live table."""

    name: str
    email: str
    state: str  # an invitation state, or "refused" when there is no invitation
    reminders_sent: int
    reminders_total: int
    next_step: str  # e.g. "reminder 2 in 5s", "expiry in 3s", "-"


def next_step_text(state: str, reminders_sent: int, reminders_total: int, due_in_s: float | None) -> str:
    """``reminder 2 in 5s``, ``expiry due``, ``send``, or ``-`` when the workflow is over."""
    if state in FINAL_STATES or state == "refused":
        return "-"
    if state == "queued":
        return "invitation email"
    step = f"reminder {reminders_sent + 1}" if reminders_sent < reminders_total else "expiry"
    if due_in_s is None:
        return step
    return f"{step} in {int(due_in_s + 0.999)}s" if due_in_s > 0 else f"{step} due"


class Screen:
    """Events scroll; the table stays at the bottom and is redrawn in place (ANSI) on a TTY.

    Without a TTY (a pipe, a CI log) each event is one line and the table becomes a one-line
    summary, printed when it changes and at least every ``plain_every_s`` seconds.
    """

    def __init__(self, out: TextIO | None = None, *, plain_every_s: float = 5.0) -> None:
        self.out = out or sys.stdout
        self.live = self.out.isatty() and os.environ.get("TERM") != "dumb"
        self.colour = self.live and "NO_COLOR" not in os.environ
        self._drawn = 0  # lines of the last drawn table (TTY)
        self._last_plain = ""
        self._last_plain_at = -1e9
        self.plain_every_s = plain_every_s
        self.broken = False

    def _write(self, text: str) -> None:
        # A closed terminal or pipe ends the demo once (the error propagates); the clean-up
        # that follows must not trip over the same error before it has stopped the children.
        if self.broken:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except OSError:
            self.broken = True
            raise

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def _clear(self) -> None:
        if self.live and self._drawn:
            self._write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def say(self, line: str = "") -> None:
        """A line that stays (above the table on a TTY)."""
        self._clear()
        self._write(line + "\n")

    def begin(self) -> None:
        if self.live:
            self._write("\x1b[?25l")  # hide the cursor while redrawing

    def end(self) -> None:
        """Leave the last table on screen and give the cursor back."""
        if self.live:
            self._write("\x1b[?25h")
            self._drawn = 0

    def table(self, title: str, rows: list[Row], footer: str, *, elapsed_s: float) -> None:
        """Show the current state: the whole table on a TTY, a summary line otherwise."""
        if self.live:
            self._draw(title, rows, footer, elapsed_s)
        else:
            self._plain(rows, footer, elapsed_s)

    def _draw(self, title: str, rows: list[Row], footer: str, elapsed_s: float) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        header = f"  {'client':<16}{'email':<21}{'state':<11}{'reminders':<11}next step"
        lines = [self.paint(_cut(f"{title}   t+{elapsed_s:.0f}s", width), "1"), self.paint(_cut(header, width), "1")]
        for row in rows:
            reminders = f"{row.reminders_sent} of {row.reminders_total}" if row.state != "refused" else "-"
            text = f"  {row.name[:15]:<16}{row.email[:20]:<21}{row.state:<11}{reminders:<11}{row.next_step}"
            line = _cut(text, width)
            if self.colour and len(line) > _STATE_AT:
                end = _STATE_AT + 11
                line = line[:_STATE_AT] + self.paint(line[_STATE_AT:end], _COLOURS.get(row.state, "")) + line[end:]
            lines.append(line)
        lines.append(_cut(f"  {footer}", width))
        self._clear()
        self._write("\n".join(lines) + "\n")
        self._drawn = len(lines)

    def _plain(self, rows: list[Row], footer: str, elapsed_s: float) -> None:
        counts: dict[str, int] = {}
        for row in rows:
            if row.state != "refused":
                counts[row.state] = counts.get(row.state, 0) + 1
        states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        line = f"invitations: {states} | {footer}"
        if line != self._last_plain or elapsed_s - self._last_plain_at >= self.plain_every_s:
            self._write(f"t+{elapsed_s:4.1f}s  {line}\n")
            self._last_plain, self._last_plain_at = line, elapsed_s


def _cut(text: str, width: int) -> str:
    """Keep a line within the terminal: a wrapped line would break the in-place redraw."""
    return text if len(text) <= width else text[: max(0, width - 1)]


def show(path: Path) -> str:
    """``path`` relative to the working directory when it is under it (shorter on screen)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def redact(url: str) -> str:
    """A URL fit for the screen: its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url
