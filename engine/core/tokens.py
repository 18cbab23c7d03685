"""Portal link tokens: 32 random bytes, only their SHA-256 stored, single use, expiring."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from datetime import datetime

from engine.core.db import insert_rows
from engine.core.errors import TokenExpired, TokenRevoked, TokenUnknown, TokenUsed
from engine.core.models import Token

_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url of 32 bytes, unpadded


def new_token() -> tuple[str, str]:
    """A fresh token and its hash; only the hash may be stored."""
    raw = secrets.token_urlsafe(32)
    return raw, hash_token(raw)


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


def issue(
    *,
    practice_id: int,
    client_id: int,
    invitation_id: int | None,
    purpose: str,
    expires_at: datetime,
    now: datetime,
) -> str:
    """Store a new token's hash and return the raw token (to go into one email, nowhere else)."""
    return issue_many([(practice_id, client_id, invitation_id, purpose, expires_at)], now=now)[0]


def issue_many(grants: Sequence[tuple[int, int, int | None, str, datetime]], *, now: datetime) -> list[str]:
    """``issue`` for many links in one statement: each grant is (practice_id, client_id,
    invitation_id, purpose, expires_at); returns the raw tokens in the same order."""
    raws, rows = [], []
    for practice_id, client_id, invitation_id, purpose, expires_at in grants:
        raw, digest = new_token()
        raws.append(raw)
        rows.append((practice_id, client_id, invitation_id, purpose, digest, now, expires_at))
    insert_rows(
        [Token.practice, Token.client, Token.invitation, Token.purpose, Token.token_hash, Token.created_at,
         Token.expires_at],
        rows,
    )
    return raws


def find(practice_id: int, raw: str, now: datetime) -> Token:
    """The usable token for ``raw`` in this practice, or the reason it is not usable.

    Looking a token up changes nothing: mail scanners open links before people do.
    """
    if not isinstance(raw, str) or not _SHAPE.match(raw):
        raise TokenUnknown("this link is not valid")
    digest = hash_token(raw)
    token = Token.get_or_none((Token.token_hash == digest) & (Token.practice == practice_id))
    # The lookup is by hash, so timing says nothing about the raw token; compare anyway.
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        raise TokenUnknown("this link is not valid")
    if token.revoked_at is not None:
        raise TokenRevoked("this link was replaced by a newer one", reason=token.revoked_reason)
    if token.used_at is not None:
        raise TokenUsed("this link was used already")
    if token.expires_at <= now:
        raise TokenExpired("this link has expired", expired_at=token.expires_at.isoformat())
    return token


def revoke(
    *,
    client_id: int,
    reason: str,
    now: datetime,
    purpose: str | None = None,
    invitation_id: int | None = None,
) -> int:
    """Make every live token of a client (optionally of one purpose or invitation) unusable."""
    cond = (Token.client == client_id) & Token.revoked_at.is_null() & Token.used_at.is_null()
    if purpose is not None:
        cond &= Token.purpose == purpose
    if invitation_id is not None:
        cond &= Token.invitation == invitation_id
    return int(Token.update(revoked_at=now, revoked_reason=reason).where(cond).execute())
