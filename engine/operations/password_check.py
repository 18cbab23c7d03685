"""Checking a client's portal password, and bringing its hash up to date on a match (P7)."""

from __future__ import annotations

import logging
from datetime import datetime

from engine.core import clock, passwords
from engine.core.db import write
from engine.core.errors import AccessDisabled, InvalidInput, PortalOff
from engine.core.models import PortalAccess
from engine.operations import lookup, roles

logger = logging.getLogger("invites.api")


def check_password(
    practice_id: int, client_id: int, password: str, *, by: str = "system:portal", now: datetime | None = None
) -> bool:
    """Whether ``password`` is the client's portal password (False too when none is set).

    The portal's sign-in form asks this, then reports the sign-in with ``record_sign_in``.
    A match on a hash made with older parameters (scrypt, or Argon2 with other costs) stores a
    fresh Argon2id hash. Refusals: ``PortalOff``, ``UnknownClient``, ``AccessDisabled``.
    """
    now = now or clock.now()
    roles.authorize(practice_id, by, "sign_in")
    if not isinstance(password, str):
        raise InvalidInput("password must be text", field="password")
    if not lookup.practice(practice_id).portal_enabled:
        raise PortalOff("the client portal is switched off for this practice")
    client = lookup.client(practice_id, client_id)
    access = PortalAccess.get_or_none(PortalAccess.client == client.id)
    if access is not None and access.disabled_at is not None:
        raise AccessDisabled("portal access is disabled for this client", client_id=client.id)
    stored = access.password_hash if access is not None else None
    # Longer than any password we accept: no need to spend a hash on it.
    if stored is None or len(password) > 1024:
        return False
    # Verifying and hashing take ~0.1 s each: both happen here, before any transaction, so a
    # sign-in never holds a lock (on SQLite, the one write lock) while it computes.
    if not passwords.verify_password(password, stored):
        logger.info("portal password did not match", extra={"action": "password_mismatch", "client_id": client.id})
        return False
    if passwords.needs_rehash(stored):
        _rehash(client.id, password, stored, now=now)
    return True


def _rehash(client_id: int, password: str, stored: str, *, now: datetime) -> None:
    fresh = passwords.hash_password(password)
    with write():
        # Compare-and-set on the hash just verified: a password set or removed in the meantime
        # (a reset link redeemed, access revoked by an email change) is newer, and stays.
        replaced = PortalAccess.update(password_hash=fresh, updated_at=now).where(
            (PortalAccess.client == client_id) & (PortalAccess.password_hash == stored)
        ).execute()
    logger.info("portal password re-hashed" if replaced else "portal password changed meanwhile; not re-hashed",
                extra={"action": "password_rehashed" if replaced else "password_rehash_skipped",
                       "client_id": client_id, "old_scheme": passwords.scheme(stored)})
