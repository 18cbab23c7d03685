"""Portal passwords: Argon2id hashes, and the scrypt hashes stored before them.

New hashes use argon2-cffi's defaults (Argon2id, RFC 9106's low-memory profile: 3 passes over
64 MiB, 4 lanes). A hash made otherwise (an old scrypt one, or Argon2 with other parameters)
still verifies, and ``needs_rehash`` says to replace it after the next successful check.
Hashing is slow on purpose (~0.1 s): callers do it outside any transaction or lock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from engine.core.errors import InvalidInput

_hasher = PasswordHasher()
_SCRYPT = "scrypt$"  # scrypt$N$r$p$salt$digest, the format before Argon2id


def check_new(password: object) -> str:
    if not isinstance(password, str) or not 10 <= len(password) <= 1024:
        raise InvalidInput("a password needs 10 to 1024 characters", field="password")
    return password


def hash_password(password: str) -> str:
    """An Argon2id hash of ``password`` (its salt and parameters included)."""
    return _hasher.hash(password)


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``, an Argon2 or a legacy scrypt hash."""
    if stored.startswith(_SCRYPT):
        return _verify_scrypt(password, stored)
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made with other parameters than new hashes get (scrypt included)."""
    if stored.startswith(_SCRYPT):
        return True
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True


def scheme(stored: str) -> str:
    """The name of the algorithm that made ``stored`` (``argon2id``, ``scrypt``…), for logs."""
    if stored.startswith(_SCRYPT):
        return "scrypt"
    return stored.split("$", 2)[1] if stored.startswith("$") else "unknown"


def _verify_scrypt(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        computed = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
        expected = base64.b64decode(digest)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, expected)


def _looks_like_hash(value: object) -> bool:
    return isinstance(value, str) and (value.startswith("$argon2") or value.startswith(_SCRYPT))


class _HashesOutOfSqlLog(logging.Filter):
    """Replaces a password hash among the parameters of peewee's DEBUG SQL log with a marker.

    A hash is not a password, but it is what an offline guessing attack starts from, and the
    statements that write or compare-and-set one carry it as a parameter.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[1], list | tuple):
            sql, params = msg
            if any(_looks_like_hash(v) for v in params):
                record.msg = (sql, ["[password hash]" if _looks_like_hash(v) else v for v in params])
        return True


# On the logger, not a handler: the record is cleaned before any handler, ours or a test's, sees it.
logging.getLogger("peewee").addFilter(_HashesOutOfSqlLog())
