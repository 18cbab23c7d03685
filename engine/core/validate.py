"""Checks on values people and other systems type in."""

from __future__ import annotations

import unicodedata

from engine.core.errors import InvalidInput

MAX_NAME = 200
MAX_MESSAGE = 2000


#: Refused everywhere: control characters (C0, DEL, C1), invisible format characters (bidi
#: overrides can make text read other than it is) and the Unicode line/paragraph separators.
_REFUSED = ("Cc", "Cf", "Zl", "Zp")


def clean_text(value: object, *, field: str, max_len: int, multiline: bool = False) -> str:
    """Trimmed text without control characters.

    Where ``multiline``, line breaks are kept, CR, LF and CRLF each becoming one LF. Every
    other control character is refused, tab included: the HTML part would collapse it, and a
    stray one pasted from a spreadsheet is more likely than one meant.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text", field=field)
    text = value.replace("\r\n", "\n").replace("\r", "\n") if multiline else value
    for ch in text:
        if unicodedata.category(ch) in _REFUSED and not (multiline and ch == "\n"):
            allowed = " (line breaks are fine)" if multiline else ""
            raise InvalidInput(f"{field} contains a control character, U+{ord(ch):04X}{allowed}", field=field)
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
    """A staff-written custom message: plain text, escaped when rendered, at most 2000 characters.

    Line breaks (CR, LF, CRLF) are kept as LF; any other control character, tab included,
    raises ``InvalidInput``. Blank means no message.
    """
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
