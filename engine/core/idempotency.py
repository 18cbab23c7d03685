"""Callers' idempotency keys: an exact repeat gets the first result, other parameters a conflict.

One mechanism for every operation that takes a key (``create_client``, ``invite``), and, at the
end, the HTTP API's whole answers. The key's row holds a fingerprint of the operation's name and
its validated parameters, and the ids of the first result; it is written in the transaction
that makes that result. So the unique (practice, key) index decides between two concurrent
first requests on SQLite and PostgreSQL alike: the loser's insert fails, its transaction rolls
back whatever it made, and its second pass (``run_once``) finds the winner's row and returns the same result.

Only results are remembered: a refused request writes nothing, so retrying it runs it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

import peewee

from engine.core.errors import IdempotencyConflict, InvalidInput
from engine.core.models import IdempotencyKey, StoredResponse
from engine.core.settings import get_settings

T = TypeVar("T")
MAX_KEY = 255


def check_key(key: object) -> str:
    """The key as given, or ``InvalidInput``: 1 to 255 printable characters."""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY or not key.isprintable():
        raise InvalidInput(f"idempotency key must be 1 to {MAX_KEY} printable characters", field="idempotency_key")
    return key


def fingerprint(operation: str, **params: object) -> str:
    """SHA-256 of the operation's name and its parameters (validated values, JSON-able)."""
    body = json.dumps({"operation": operation, "params": params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def recall(practice_id: int, key: str, digest: str, *, now: datetime) -> IdempotencyKey | None:
    """Inside a write transaction: the key's row if it names this very request, else None.

    A key seen with another fingerprint raises ``IdempotencyConflict``. An expired key is
    deleted here, so a key reused after its 24 h names a new request.
    """
    scope = (IdempotencyKey.practice == practice_id) & (IdempotencyKey.key == key)
    IdempotencyKey.delete().where(scope & (IdempotencyKey.expires_at <= now)).execute()
    row = IdempotencyKey.get_or_none(scope)
    if row is not None and row.request_hash != digest:
        raise IdempotencyConflict("this idempotency key was used with other parameters", key=key)
    return row


def remember(
    practice_id: int,
    key: str,
    digest: str,
    *,
    now: datetime,
    client_id: int | None = None,
    invitation_id: int | None = None,
) -> None:
    """Inside the result's write transaction: store the key with the first result's ids.

    A concurrent request that stored the same key first makes this insert fail
    (``peewee.IntegrityError``), which rolls the whole transaction back.
    """
    IdempotencyKey.create(
        practice=practice_id, key=key, request_hash=digest, client=client_id, invitation=invitation_id,
        created_at=now, expires_at=now + timedelta(seconds=get_settings().idempotency_ttl_s),
    )


def run_once(attempt: Callable[[], T]) -> T:
    """Run ``attempt`` (one whole write transaction); once more if a unique index refused it.

    The second pass sees what the concurrent winner committed: its key (replayed by
    ``recall``) or the client's live invitation. A second refusal is a real error.
    """
    try:
        return attempt()
    except peewee.IntegrityError:
        return attempt()


# --- Whole answers, for the HTTP API ----------------------------------------------------------
# The HTTP API remembers the status and body of its first answer to a key, for every POST (not
# only those whose operation takes a key): the same table discipline as above, one row per
# (owner, key) under a unique index, written before the request runs so that of two concurrent
# requests with one key only one runs.

#: A first request that has not answered after this long is taken to have died with its process:
#: a repeat may then run (every operation that makes something is itself safe to run twice).
ABANDONED_AFTER_S = 60


def claim_response(owner: str, key: str, digest: str, *, now: datetime) -> StoredResponse | None:
    """Inside a write transaction: None if this request may run (its key is now taken), else the
    key's row: answered (``status`` set, replay it) or still running (``status`` None, wait).

    The key seen with another fingerprint raises ``IdempotencyConflict``. A concurrent first
    request makes the insert fail (``peewee.IntegrityError``): ``run_once`` around it.
    """
    scope = (StoredResponse.owner == owner) & (StoredResponse.key == key)
    StoredResponse.delete().where(scope & (StoredResponse.expires_at <= now)).execute()
    abandoned = now - timedelta(seconds=ABANDONED_AFTER_S)
    StoredResponse.delete().where(
        scope & StoredResponse.status.is_null() & (StoredResponse.created_at <= abandoned)
    ).execute()
    row = StoredResponse.get_or_none(scope)
    if row is not None:
        if row.request_hash != digest:
            raise IdempotencyConflict("this idempotency key was used with another request", key=key)
        return row
    StoredResponse.create(owner=owner, key=key, request_hash=digest, created_at=now,
                          expires_at=now + timedelta(seconds=get_settings().idempotency_ttl_s))
    return None


def store_response(owner: str, key: str, status: int, body: str, headers: dict[str, str]) -> None:
    """The first request's answer, replayed to every repeat until the key expires."""
    StoredResponse.update(status=status, body=body, headers=json.dumps(headers)).where(
        (StoredResponse.owner == owner) & (StoredResponse.key == key) & StoredResponse.status.is_null()
    ).execute()


def release_response(owner: str, key: str) -> None:
    """Forget a key whose request was refused: as with the engine's keys, a retry runs again."""
    StoredResponse.delete().where(
        (StoredResponse.owner == owner) & (StoredResponse.key == key) & StoredResponse.status.is_null()
    ).execute()
