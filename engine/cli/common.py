"""What the commands of ``invites`` share: exit codes, argument types, ``--by``/``--json``, output."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

OK, REFUSED, USAGE, UNAVAILABLE = 0, 1, 2, 3
#: 128 + SIGPIPE: what a shell reports for a command whose reader went away (``yes | head``).
PIPE_CLOSED = 141


def duration_s(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``6h``, ``14d`` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    text = text.strip()
    try:
        if text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except (ValueError, IndexError) as exc:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 90s, 15m, 6h, 14d)") from exc


def window(text: str) -> tuple[int, int] | None:
    """``09:00-18:00`` → minutes of the day; ``any`` → no window."""
    if text == "any":
        return None
    try:
        start, end = text.split("-")
        return tuple(int(h) * 60 + int(m) for h, m in (start.split(":"), end.split(":")))  # type: ignore[return-value]
    except ValueError as exc:
        raise argparse.ArgumentTypeError("send window looks like 09:00-18:00, or 'any'") from exc


def emit(args: argparse.Namespace, value: Any, text: Callable[[Any], str] | None = None) -> None:
    """Print ``value`` as JSON with ``--json``, else as ``text(value)``."""
    if getattr(args, "json", False) or text is None:
        print(json.dumps(value, indent=2, default=_json_default))
    else:
        print(text(value))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def add_by(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--by",
        default=os.environ.get("INVITES_ACTOR"),
        required=os.environ.get("INVITES_ACTOR") is None,
        help="who acts: staff:<id> or system:<name> (default: $INVITES_ACTOR)",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
