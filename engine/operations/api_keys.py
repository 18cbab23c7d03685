"""Keys of the systems that call the HTTP API (B14): create, list, rotate, revoke, authenticate.

A key is ``pik_<lookup id>_<secret>``: the prefix makes a leaked key recognisable (secret
scanners, logs), the 8-character lookup id finds its row, and the secret is 32 random bytes.
Only the SHA-256 of the whole key is stored: a fast hash is right for 256 random bits (there is
nothing to guess), and it is compared in constant time. The key is shown once, when made.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.core import audit, clock
from engine.core.db import write
from engine.core.errors import InvalidInput, UnknownApiKey
from engine.core.models import ApiKey
from engine.operations import lookup

logger = logging.getLogger(__name__)

#: What a key may be used for: ``invite`` (other systems asking for invitations), ``staff``
#: (every staff operation, acting for a named staff member), ``portal`` (what the client portal
#: needs), ``ops`` (queue figures and dead letters).
SCOPES = ("invite", "staff", "portal", "ops")
PREFIX = "pik_"
_KEY = re.compile(r"^pik_([a-z0-9]{8})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")  # the ``system:<name>`` actor of engine.operations.roles
_LOOKUP_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(frozen=True)
class ApiKeyInfo:
    """A key as it may be shown again: never the key itself, only its visible prefix."""

    id: int
    practice_id: int | None
    name: str
    scopes: list[str]
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> ApiKeyInfo:
        return cls(row.id, row.practice_id, row.name, row.scopes.split(","), f"{PREFIX}{row.lookup_id}_",
                   row.created_at, row.revoked_at, row.last_used_at)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "scopes": list(self.scopes)}


@dataclass(frozen=True)
class NewApiKey:
    """A key just made: ``key`` is shown this once and stored nowhere."""

    info: ApiKeyInfo
    key: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.info.to_dict(), "key": self.key}


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _scopes(value: object) -> str:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise InvalidInput(f"scopes must be one or more of {', '.join(SCOPES)}", field="scopes")
    clean = [str(x).strip() for x in items]
    unknown = [x for x in clean if x not in SCOPES]
    if unknown:
        raise InvalidInput(f"unknown scope {unknown[0]!r}: one or more of {', '.join(SCOPES)}", field="scopes")
    return ",".join(s for s in SCOPES if s in clean)


def _audit(row: ApiKey, action: str, now: datetime, actor: str) -> None:
    # A platform key belongs to no practice: its record is the log line below (never the key).
    if row.practice_id is not None:
        audit.record(practice_id=row.practice_id, actor=actor, action=action, now=now,
                     detail={"api_key_id": row.id, "name": row.name, "scopes": row.scopes})
    logger.info("api key %s", action.removeprefix("api_key_"),
                extra={"action": action, "api_key_id": row.id, "practice_id": row.practice_id})


def _make(practice_id: int | None, name: str, scopes: str, now: datetime) -> tuple[ApiKey, str]:
    while True:
        lookup_id = "".join(secrets.choice(_LOOKUP_ALPHABET) for _ in range(8))
        if not ApiKey.select().where(ApiKey.lookup_id == lookup_id).exists():
            break
    key = f"{PREFIX}{lookup_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey.create(practice=practice_id, name=name, scopes=scopes, lookup_id=lookup_id,
                        key_hash=_digest(key), created_at=now)
    return row, key


def create_key(practice_id: int | None, name: str, scopes: object, *, by: str = "system:platform",
               now: datetime | None = None) -> NewApiKey:
    """A new key for one calling system of a practice (``practice_id=None``: a platform key).

    ``name`` (lower-case letters, digits, ``-``, ``_``) is how the system's own actions are
    audited: ``system:<name>``.
    """
    now = now or clock.now()
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput("name must be lower-case letters, digits, '-' or '_', starting with a letter, "
                           "at most 40", field="name")
    clean_scopes = _scopes(scopes)
    with write():
        if practice_id is not None:
            practice_id = lookup.practice(practice_id).id
        row, key = _make(practice_id, name, clean_scopes, now)
        _audit(row, "api_key_created", now, by)
    return NewApiKey(ApiKeyInfo.of(row), key)


def list_keys(practice_id: int | None) -> list[ApiKeyInfo]:
    """A practice's keys (``None``: the platform keys), revoked ones included, oldest first."""
    if practice_id is None:
        cond = ApiKey.practice.is_null()
    else:
        cond = ApiKey.practice == lookup.practice(practice_id).id
    return [ApiKeyInfo.of(row) for row in ApiKey.select().where(cond).order_by(ApiKey.id)]


def _live(key_id: object) -> ApiKey:
    row = ApiKey.get_or_none(ApiKey.id == key_id) if isinstance(key_id, int) else None
    if row is None or row.revoked_at is not None:
        raise UnknownApiKey("no live API key with that id", api_key_id=key_id)
    return row


def rotate_key(key_id: int, *, by: str = "system:platform", now: datetime | None = None) -> NewApiKey:
    """A new key with the same practice, name and scopes; the old one stops working at once."""
    now = now or clock.now()
    with write():
        old = _live(key_id)
        ApiKey.update(revoked_at=now).where(ApiKey.id == old.id).execute()
        row, key = _make(old.practice_id, old.name, old.scopes, now)
        _audit(row, "api_key_rotated", now, by)
    return NewApiKey(ApiKeyInfo.of(row), key)


def revoke_key(key_id: int, *, by: str = "system:platform", now: datetime | None = None) -> ApiKeyInfo:
    """The key stops working at once."""
    now = now or clock.now()
    with write():
        row = _live(key_id)
        ApiKey.update(revoked_at=now).where(ApiKey.id == row.id).execute()
        _audit(row, "api_key_revoked", now, by)
    return ApiKeyInfo.of(ApiKey.get_by_id(row.id))


def authenticate(key: object, *, now: datetime | None = None) -> ApiKey | None:
    """The live key's row, or None for anything else (malformed, unknown, revoked)."""
    match = _KEY.match(key) if isinstance(key, str) else None
    if match is None or not isinstance(key, str):
        return None
    row = ApiKey.get_or_none(ApiKey.lookup_id == match.group(1))
    if row is None or not hmac.compare_digest(row.key_hash, _digest(key)) or row.revoked_at is not None:
        return None
    now = now or clock.now()
    # At most one write a minute per key: a busy system's every request must not contend for it.
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() >= 60:
        ApiKey.update(last_used_at=now).where(ApiKey.id == row.id).execute()
    return row
