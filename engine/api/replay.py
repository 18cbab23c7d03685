"""``Idempotency-Key`` on every POST: a repeat gets the first answer (status and body) for 24 h.

The same key with another request (method, path, body, practice or acting staff) answers 409
``idempotency_conflict``. Keys belong to the practice of the calling key (a platform key: to that
key), so a rotated key keeps its keys. Of two concurrent requests with one key, one runs and the
other waits for its answer (``engine.core.idempotency.claim_response``). A refused request
(4xx, 5xx) is not remembered: a retry runs again, as the engine's own keys behave.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.api.problems import from_error
from engine.core import clock, idempotency
from engine.core.db import connection, write
from engine.core.errors import Conflict, InviteError
from engine.core.models import StoredResponse
from engine.operations import api_keys

#: How long a repeat waits for a concurrent first request's answer before a 409.
WAIT_S = 10.0
_POLL_S = 0.05
_REPLAYED_HEADERS = ("content-type", "location")


def _digest(scope: Scope, headers: Headers, body: bytes) -> str:
    try:
        content: Any = json.loads(body) if body else None
    except ValueError:
        content = hashlib.sha256(body).hexdigest()
    return idempotency.fingerprint(
        "http", method=scope["method"], path=scope["path"], query=scope.get("query_string", b"").decode("latin-1"),
        body=content, practice=headers.get("x-practice-id"), staff=headers.get("x-acting-staff"),
    )


def _owner(headers: Headers) -> str | None:
    scheme, _, key = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    row = api_keys.authenticate(key.strip())
    if row is None:
        return None  # the route answers 401
    return f"practice:{row.practice_id}" if row.practice_id is not None else f"key:{row.id}"


def _claim(owner: str, key: str, digest: str) -> StoredResponse | None:
    def attempt() -> StoredResponse | None:
        with write():
            return idempotency.claim_response(owner, key, digest, now=clock.now())

    with connection():
        return idempotency.run_once(attempt)


def _store(owner: str, key: str, status: int | None, body: bytes, headers: dict[str, str]) -> None:
    with connection(), write():
        if status is not None and status < 400:
            idempotency.store_response(owner, key, status, body.decode(), headers)
        else:
            idempotency.release_response(owner, key)


class IdempotencyMiddleware:
    """ASGI middleware: replays, conflicts and single flight for POSTs with an ``Idempotency-Key``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if headers is None or scope["method"] != "POST" or "idempotency-key" not in headers:
            await self.app(scope, receive, send)
            return
        body = await _read(receive)
        try:
            key = idempotency.check_key(headers["idempotency-key"])
            owner = await run_in_threadpool(_with_db, _owner, headers)
            if owner is None:
                await self.app(scope, _replay(body, receive), send)
                return
            digest = _digest(scope, headers, body)
            waited = 0.0
            while (seen := await run_in_threadpool(_claim, owner, key, digest)) is not None:
                if seen.status is not None:
                    await _send_stored(send, seen)
                    return
                if waited >= WAIT_S:
                    raise Conflict("a request with this idempotency key is still running; try again later",
                                   key=key)
                await asyncio.sleep(_POLL_S)
                waited += _POLL_S
        except InviteError as exc:
            await from_error(exc)(scope, _replay(body, receive), send)
            return
        await self._run(scope, _replay(body, receive), send, owner, key)

    async def _run(self, scope: Scope, receive: Receive, send: Send, owner: str, key: str) -> None:
        status: int | None = None
        kept: dict[str, str] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", []):
                    if name.decode("latin-1").lower() in _REPLAYED_HEADERS:
                        kept[name.decode("latin-1").lower()] = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            await run_in_threadpool(_store, owner, key, status, b"".join(chunks), kept)


def _with_db(fn: Any, *args: Any) -> Any:
    with connection():
        return fn(*args)


async def _read(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read already, then the client's own messages (a disconnect, when it comes)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_stored(send: Send, row: StoredResponse) -> None:
    headers = [(k.encode(), v.encode()) for k, v in json.loads(row.headers or "{}").items()]
    headers.append((b"idempotent-replayed", b"true"))
    body = (row.body or "").encode()
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": row.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

