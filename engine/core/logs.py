"""Logging set-up: text for people, JSON lines for machines. Never a token in a line.

Inside a Dramatiq message every line, ours or a library's, carries the message's fields
(``invitation_id``, ``step``…): ``MessageLogContext`` sets them, ``ContextFilter`` adds them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import IO, Any

import dramatiq
from dramatiq.middleware import Middleware

#: Attributes every LogRecord has; anything else came through ``extra=`` and is ours.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

#: Fields added to every line logged while they are set (a message's invitation, its step).
_context: ContextVar[dict[str, Any]] = ContextVar("invites_log_context", default={})  # noqa: B039

# A portal token is 32 random bytes, base64url: 43 characters. The first pattern catches it in a
# link, the second anywhere else; a log line is the wrong place for either.
_TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"'<>\\]+")
_BARE_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")


def redact(text: str) -> str:
    """``text`` with anything shaped like a portal token replaced by ``[redacted]``.

    A safety net: no code path logs a token on purpose, and this keeps a future mistake (an
    exception quoting a URL, say) out of the logs too.
    """
    return _BARE_TOKEN.sub("[redacted]", _TOKEN_IN_URL.sub(r"\1[redacted]", text))


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _redacted(v) for k, v in value.items()}
    return value


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every line logged in this thread (or task) until the block ends."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """The fields ``log_context`` has set here."""
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copies the current ``log_context`` fields onto each record; explicit ``extra=`` wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the record's ``extra`` fields (action, invitation_id…)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # Redact the values, not the encoded line: a pattern must not cut a JSON escape in two.
        return json.dumps({k: _redacted(v) for k, v in entry.items()}, default=lambda v: redact(str(v)))


class TextFormatter(logging.Formatter):
    """The text format, with the same token safety net as the JSON one."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def make_handler(fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing ``fmt`` (``json`` or ``text``) lines, with the message context added."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ContextFilter())
    return handler


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    root = logging.getLogger()
    root.handlers[:] = [make_handler(fmt)]
    root.setLevel(level)


#: The argument that names what a message is about, per actor (default: an invitation id).
_SUBJECT = {"send_outbox_email": "outbox_id"}


def message_fields(message: dramatiq.Message[Any] | dramatiq.MessageProxy) -> dict[str, Any]:
    """The log fields of a message: its step (the actor), its id, and the invitation(s) it is about."""
    fields: dict[str, Any] = {"step": message.actor_name, "message_id": message.message_id}
    args = list(message.args)
    if args and isinstance(args[0], dict):  # a retries-exhausted handler: the failed message
        fields["failed_step"] = args[0].get("actor_name")
        args = list(args[0].get("args") or [])
    first = args[0] if args else None
    if isinstance(first, int) and not isinstance(first, bool):
        fields[_SUBJECT.get(message.actor_name, "invitation_id")] = first
    elif isinstance(first, list):
        fields["invitation_ids"] = first[:50]
    return fields


class MessageLogContext(Middleware):
    """Sets the log context of each message for as long as the worker thread handles it.

    Add it before the other middleware: its ``before`` hook then runs first and its ``after``
    hook last, so Dramatiq's own lines about the message (retries, failures) carry the fields.
    """

    def __init__(self) -> None:
        self._tokens = threading.local()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        stack = getattr(self._tokens, "stack", None)
        if stack is None:
            stack = self._tokens.stack = []
        stack.append(_context.set({**_context.get(), **message_fields(message)}))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        stack: list[Token[dict[str, Any]]] = getattr(self._tokens, "stack", None) or []
        if stack:
            _context.reset(stack.pop())

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self.after_process_message(broker, message)
