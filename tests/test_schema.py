"""Migrations: a database made by an earlier version upgrades to the same schema a new one gets."""

from __future__ import annotations

from engine.core import schema
from engine.core.db import db
from engine.core.models import SchemaVersion


def _indexes(table: str) -> dict[str, tuple[tuple[str, ...], bool]]:
    return {i.name: (tuple(i.columns), i.unique) for i in db.get_indexes(table)}


def test_migration_3_swaps_single_column_indexes_for_the_composite_ones(broker):
    tables = ("client", "audit_event", "token")
    fresh = {table: _indexes(table) for table in tables}
    assert ("practice_id", "id") in [cols for cols, _ in fresh["client"].values()]
    assert ("practice_id",) not in [cols for cols, _ in fresh["client"].values()]
    assert not {("practice_id",), ("invitation_id",)} & {cols for cols, _ in fresh["audit_event"].values()}
    assert ("client_id",) not in [cols for cols, _ in fresh["token"].values()]
    # Put the database back as version 2 left it: single-column indexes, no composite one.
    db.execute_sql('DROP INDEX "client_practice_id_id"')
    for name, table, column in (("client_practice_id", "client", "practice_id"),
                                ("audit_event_practice_id", "audit_event", "practice_id"),
                                ("audit_event_invitation_id", "audit_event", "invitation_id"),
                                ("token_client_id", "token", "client_id")):
        db.execute_sql(f'CREATE INDEX "{name}" ON "{table}" ("{column}")')
    SchemaVersion.delete().where(SchemaVersion.version >= 3).execute()
    assert schema.current_version() == 2

    assert schema.upgrade() == [3, 4]  # 4 finds its column there already
    assert {table: _indexes(table) for table in tables} == fresh
    assert schema.upgrade() == []
