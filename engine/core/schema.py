"""Creating and evolving the schema: numbered migrations, applied once each, in order.

To change the schema, append a ``(number, description, function)`` to ``MIGRATIONS``; the
function gets a ``playhouse.migrate.SchemaMigrator`` and runs inside one transaction.
``invites db upgrade`` (or ``upgrade()``) applies what has not run yet.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import cast

from playhouse.migrate import SchemaMigrator, migrate

from engine.core import clock, idempotency
from engine.core.db import db, is_postgres
from engine.core.models import (
    MODELS,
    ApiKey,
    AuditEvent,
    Client,
    IdempotencyKey,
    Invitation,
    SchemaVersion,
    StoredResponse,
    Token,
)


def _initial(migrator: SchemaMigrator) -> None:
    db.create_tables([m for m in MODELS if m is not SchemaVersion], safe=True)


def _one_live_invitation_index(migrator: SchemaMigrator) -> None:
    # Databases made by migration 1 before the index had its own name never got it; "safe"
    # creates only the table and indexes that are missing.
    db.create_tables([Invitation], safe=True)


def _composite_indexes_only(migrator: SchemaMigrator) -> None:
    # Client gets (practice_id, id) for the keyset walk of a mass invitation in place of
    # practice_id alone; audit_event and token lose the single-column indexes that their
    # composite ones ((practice_id, at), (invitation_id, id); (client_id, purpose)) make
    # redundant: each was one more index entry to write with every row.
    for name in ("client_practice_id", "audit_event_practice_id", "audit_event_invitation_id", "token_client_id"):
        db.execute_sql(f'DROP INDEX IF EXISTS "{name}"')
    db.create_tables([Client, AuditEvent, Token], safe=True)


def _idempotency_key_client(migrator: SchemaMigrator) -> None:
    # A key now remembers the client a create_client made, and fingerprints the operation's
    # name with its parameters. Keys taken before hashed an invite's (client, kind, message):
    # those that still match their invitation get the new fingerprint, so a retry across the
    # upgrade gets its first result; any other keeps a hash nothing matches (a conflict, never
    # a duplicate) until it expires, within a day.
    # Migration 1 makes the current tables: a database born at version 4 has the column.
    if "client_id" not in {c.name for c in db.get_columns("idempotency_key")}:
        migrate(migrator.add_column("idempotency_key", "client_id", IdempotencyKey.client))
    rows = (IdempotencyKey.select(IdempotencyKey.id, IdempotencyKey.request_hash, Invitation.client,
                                  Invitation.kind, Invitation.custom_message).join(Invitation).tuples())
    legacy = cast(list[tuple[int, str, int, str, str | None]], list(rows))
    for key_id, old_hash, client_id, kind, message in legacy:
        body = json.dumps({"client": client_id, "kind": kind, "message": message}, sort_keys=True)
        if old_hash == hashlib.sha256(body.encode()).hexdigest():
            IdempotencyKey.update(
                client=client_id, request_hash=idempotency.fingerprint("invite", client_id=client_id, message=message),
            ).where(IdempotencyKey.id == key_id).execute()


def _api_tables(migrator: SchemaMigrator) -> None:
    # The HTTP API's keys, and the answers it replays for a repeated Idempotency-Key.
    db.create_tables([ApiKey, StoredResponse], safe=True)


MIGRATIONS: list[tuple[int, str, Callable[[SchemaMigrator], None]]] = [
    (1, "initial tables", _initial),
    (2, "unique index: one live invitation per client", _one_live_invitation_index),
    (3, "composite indexes: client (practice_id, id); audit_event, token without redundant ones",
     _composite_indexes_only),
    (4, "idempotency_key.client_id: the first result of create_client", _idempotency_key_client),
]


def current_version() -> int:
    if not db.table_exists(SchemaVersion._meta.table_name):
        return 0
    row = SchemaVersion.select(SchemaVersion.version).order_by(SchemaVersion.version.desc()).first()
    return int(row.version) if row else 0


def upgrade(now: datetime | None = None) -> list[int]:
    """Apply the migrations that have not run; returns their numbers."""
    now = now or clock.now()
    db.create_tables([SchemaVersion], safe=True)
    done = current_version()
    applied = []
    migrator = SchemaMigrator.from_database(db.obj)
    for number, _, apply in MIGRATIONS:
        if number <= done:
            continue
        with db.atomic():
            apply(migrator)
            SchemaVersion.create(version=number, applied_at=now)
        applied.append(number)
    return applied


def drop_all() -> None:
    """Drop every table (tests and ``invites db reset``)."""
    db.drop_tables(list(MODELS), safe=True, cascade=is_postgres())
