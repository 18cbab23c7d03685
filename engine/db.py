"""The database: one proxy the models bind to, opened from ``DATABASE_URL``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlparse

import peewee
from playhouse.pool import PooledPostgresqlDatabase

db = peewee.DatabaseProxy()

#: SQLite: WAL so readers never wait for the writer; writes wait up to 30 s for the lock.
SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",
    "foreign_keys": 1,
    "cache_size": -64_000,
    "busy_timeout": 30_000,
}


def open_database(url: str, *, max_connections: int = 32) -> peewee.Database:
    """A Peewee database for ``url`` (``sqlite:///path`` or ``postgresql://…``)."""
    parsed = urlparse(url)
    scheme = parsed.scheme.split("+")[0]
    options: dict[str, Any] = dict(parse_qsl(parsed.query))
    if scheme == "sqlite":
        path = url.split("://", 1)[1].split("?", 1)[0]
        path = path[1:] if path.startswith("/") else path  # sqlite:////abs, sqlite:///rel
        if path not in ("", ":memory:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: connections stay per thread (Peewee's state is thread-local).
        return peewee.SqliteDatabase(
            path or ":memory:", pragmas=SQLITE_PRAGMAS, timeout=30, check_same_thread=False
        )
    if scheme in ("postgres", "postgresql"):
        return PooledPostgresqlDatabase(
            parsed.path.lstrip("/"),
            host=parsed.hostname or None,
            port=parsed.port or None,
            user=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            max_connections=int(options.pop("max_connections", max_connections)),
            stale_timeout=300,
            timeout=30,
            **options,
        )
    raise ValueError(f"unsupported DATABASE_URL scheme {parsed.scheme!r}")


def init_db(url: str, **kwargs: Any) -> peewee.Database:
    """Point the models at ``url``."""
    if db.obj is not None and not db.is_closed():
        db.close()
    database = open_database(url, **kwargs)
    db.initialize(database)
    return database


def is_sqlite() -> bool:
    return isinstance(db.obj, peewee.SqliteDatabase)


def is_postgres() -> bool:
    return isinstance(db.obj, peewee.PostgresqlDatabase)


def write() -> Any:
    """A transaction for read-then-write work.

    SQLite's default ``BEGIN`` is deferred: a read followed by a write fails at once with
    "database is locked" when another connection wrote in between, whatever the busy timeout.
    ``BEGIN IMMEDIATE`` takes the write lock first and waits for it instead.
    """
    if is_sqlite():
        return db.atomic("IMMEDIATE")
    return db.atomic()


@contextlib.contextmanager
def connection() -> Iterator[None]:
    """Hold a connection for a unit of work and give it back after (workers, CLI, sweeps)."""
    opened = db.is_closed()
    if opened:
        db.connect()
    try:
        yield
    finally:
        if opened and not db.is_closed():
            db.close()


class UTCDateTimeField(peewee.Field):
    """An aware UTC datetime, stored fixed-width so SQLite's text comparisons order correctly."""

    field_type = "TIMESTAMP"
    _format = "%Y-%m-%d %H:%M:%S.%f"

    def db_value(self, value: datetime | None) -> str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC field")
        return value.astimezone(UTC).strftime(self._format)

    def python_value(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.strptime(value, self._format)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
