"""Checks on values people and other systems type in."""

from __future__ import annotations

import unicodedata

from engine.errors import InvalidInput

MAX_NAME = 200
MAX_MESSAGE = 2000


def clean_text(value: object, *, field: str, max_len: int, multiline: bool = False) -> str:
    """Trimmed text without control characters (newlines kept only where ``multiline``)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text", field=field)
    allowed = {"\n"} if multiline else set()
    text = value.replace("\r\n", "\n").replace("\r", "\n") if multiline else value
    for ch in text:
        if ch not in allowed and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise InvalidInput(f"{field} contains a control character", field=field)
    text = text.strip()
    if len(text) > max_len:
        raise InvalidInput(f"{field} is longer than {max_len} characters", field=field)
    return text


def name(value: object, *, field: str = "name") -> str:
    text = clean_text(value, field=field, max_len=MAX_NAME)
    if not text:
        raise InvalidInput(f"{field} is empty", field=field)
    return text


def message(value: object | None) -> str | None:
    """A staff-written custom message: plain text, escaped when rendered, length-limited."""
    if value is None:
        return None
    text = clean_text(value, field="message", max_len=MAX_MESSAGE, multiline=True)
    return text or None


def int_between(value: object, low: int, high: int, *, field: str) -> int:
    """An int (not a bool) from ``low`` to ``high``, or ``InvalidInput`` naming the range."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{field} must be between {low} and {high}", field=field)
    return value


def positive_id(value: object, *, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value > 2**62:
        raise InvalidInput(f"{field} must be a positive integer", field=field)
    return value
