"""Who is calling: the API key (``Authorization: Bearer pik_…``), its practice, scopes and actor.

A practice's key acts in its own practice; a platform key names the practice it acts in with
``X-Practice-Id``. Another practice's id, from either, is "not found": a key never learns that
another practice's objects exist. A staff operation names the staff member it acts for with
``X-Acting-Staff: <staff id>``, and the engine's own role checks decide; without it the
calling system acts on its own, audited as ``system:<key name>``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.core.db import connection
from engine.core.errors import InvalidInput, OutOfScope, Unauthenticated, UnknownPractice
from engine.operations import api_keys

F = TypeVar("F", bound=Callable[..., Any])

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer pik_…` (docs/api.md)")


def with_db(fn: F) -> F:
    """Run a sync endpoint with a database connection of its own thread, given back after.

    FastAPI runs each sync endpoint and dependency in its thread pool, and Peewee's connections
    are per thread: the connection is opened and closed in the very call that uses it.
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with connection():
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


@dataclass(frozen=True)
class Caller:
    """An authenticated request: the key's facts, the practice it acts in, and the actor."""

    key_id: int
    key_name: str
    key_practice_id: int | None
    scopes: frozenset[str]
    #: The practice the request acts in (None: a platform key that named none).
    practice_id: int | None
    #: ``staff:<id>`` from ``X-Acting-Staff``, else ``system:<key name>``.
    actor: str

    @property
    def practice(self) -> int:
        """The practice, or ``InvalidInput`` for a platform key that did not name one."""
        if self.practice_id is None:
            raise InvalidInput("a platform key names the practice it acts in with the X-Practice-Id header",
                               field="X-Practice-Id")
        return self.practice_id

    @property
    def is_platform(self) -> bool:
        return self.key_practice_id is None


def _positive(value: str | None, field: str) -> int | None:
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or not 0 < int(value) < 2**63:
        raise InvalidInput(f"{field} must be a positive whole number", field=field)
    return int(value)


def authenticate(
    credentials: HTTPAuthorizationCredentials | None,
    x_practice_id: str | None,
    x_acting_staff: str | None,
    scopes: tuple[str, ...],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("an API key is needed: Authorization: Bearer pik_…")
    with connection():
        row = api_keys.authenticate(credentials.credentials)
    if row is None:
        raise Unauthenticated("the API key is malformed, unknown or revoked")
    held = frozenset(row.scopes.split(","))
    if scopes and not held & set(scopes):
        raise OutOfScope(f"this key's scopes ({', '.join(sorted(held))}) do not include "
                         f"{' or '.join(scopes)}", needs=list(scopes))
    asked = _positive(x_practice_id, "X-Practice-Id")
    practice_id = row.practice_id
    if practice_id is None:
        practice_id = asked
    elif asked is not None and asked != practice_id:
        raise UnknownPractice("no practice with that id", practice_id=asked)
    staff = _positive(x_acting_staff, "X-Acting-Staff")
    actor = f"staff:{staff}" if staff is not None else f"system:{row.name}"
    return Caller(row.id, row.name, row.practice_id, held, practice_id, actor)


def caller(*scopes: str) -> Any:
    """A dependency: the authenticated caller, whose key holds one of ``scopes`` (any, if none)."""

    def dependency(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        x_practice_id: Annotated[str | None, Header(description="With a platform key: the practice it acts in. "
                                                    "With a practice's key: optional, must be its own.")] = None,
        x_acting_staff: Annotated[str | None, Header(description="The staff member a staff operation acts for "
                                                     "(their role decides); without it the system acts on its "
                                                     "own, as `system:<key name>`.")] = None,
    ) -> Caller:
        return authenticate(credentials, x_practice_id, x_acting_staff, scopes)

    return Depends(dependency)


Staff = Annotated[Caller, caller("staff")]
Inviting = Annotated[Caller, caller("invite", "staff")]
Portal = Annotated[Caller, caller("portal")]
PortalOrStaff = Annotated[Caller, caller("portal", "staff")]
Ops = Annotated[Caller, caller("ops")]
