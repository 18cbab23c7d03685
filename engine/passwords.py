"""Portal passwords, stored as scrypt hashes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from engine.errors import InvalidInput

_N, _R, _P = 2**14, 8, 1


def check_new(password: object) -> str:
    if not isinstance(password, str) or not 10 <= len(password) <= 1024:
        raise InvalidInput("a password needs 10 to 1024 characters", field="password")
    return password


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    enc = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${enc(salt).decode()}${enc(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        computed = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))
