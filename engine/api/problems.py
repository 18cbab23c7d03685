"""Every refusal as ``application/problem+json`` (RFC 9457), carrying the engine's stable ``code``.

The status comes from the error's class: not found (another practice's objects included) is
404, never 403; a state that forbids the request is 409; a service that did not answer is 503.
Nothing else of an unexpected error leaves the process: no stack trace, no message.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from engine.core import errors

logger = logging.getLogger(__name__)

PROBLEM = "application/problem+json"

#: The first class in an error's MRO found here decides its status.
STATUS: dict[type[errors.InviteError], int] = {
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.TokenUnknown: 404,
    errors.TokenError: 410,
    errors.InvalidInput: 422,
    errors.ServiceUnavailable: 503,
    errors.DeliveryError: 503,
}
#: Library errors that mean a service (database, broker) did not answer.
_UNAVAILABLE_MODULES = ("peewee", "psycopg2", "sqlite3", "redis", "pika", "dramatiq")


def status_of(exc: errors.InviteError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 409  # the rest are conflicts with the state of things: no consent, portal off, signed in…


def problem(status: int, code: str, detail: str, *, headers: dict[str, str] | None = None,
            **extra: Any) -> Response:
    body = {"type": f"https://portal-invites.invalid/errors/{code}", "title": code.replace("_", " "),
            "status": status, "code": code, "detail": detail, **extra}
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return Response(json.dumps(body, default=str), status_code=status, media_type=PROBLEM, headers=headers)


def from_error(exc: errors.InviteError) -> Response:
    extra = {k: v for k, v in exc.details.items() if k not in ("type", "title", "status", "code", "detail")}
    return problem(status_of(exc), exc.code, exc.message, **extra)


def is_unavailable(exc: BaseException) -> bool:
    """A connection error of ours or of a database or broker library (not their other errors)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return any(
        cls.__module__.split(".")[0] in _UNAVAILABLE_MODULES
        and any(word in cls.__name__ for word in ("Operational", "Interface", "Connection", "Timeout"))
        for cls in type(exc).__mro__
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into a problem document."""

    async def engine_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.InviteError)
        return from_error(exc)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        found = exc.errors()
        if any(e.get("type") == "json_invalid" for e in found):
            return problem(400, "malformed_request", "the request body is not valid JSON")
        first = found[0] if found else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return problem(422, errors.InvalidInput.code, f"{field or 'request'}: {first.get('msg', 'invalid')}",
                       field=field, errors=[{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg")}
                                            for e in found])

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem(exc.status_code, code, str(exc.detail))

    async def unexpected(request: Request, exc: Exception) -> Response:
        if is_unavailable(exc):
            logger.warning("a service did not answer", extra={"action": "api_unavailable",
                                                             "error": type(exc).__name__})
            return problem(503, errors.ServiceUnavailable.code, "the database or the broker did not answer; "
                           "try again", headers={"Retry-After": "5"})
        logger.exception("unexpected error", extra={"action": "api_error", "path": request.url.path})
        return problem(500, "internal_error", "the engine failed unexpectedly; nothing is said of why here")

    app.add_exception_handler(errors.InviteError, engine_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
