"""The database: one proxy the models bind to, opened from ``DATABASE_URL``."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
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
    ``BEGIN IMMEDIATE`` takes the write lock first and waits for it instead, in the queue of
    ``_Writers``.
    """
    if is_sqlite():
        return _sqlite_write()
    return db.atomic()


@contextlib.contextmanager
def _sqlite_write() -> Iterator[None]:
    path = db.obj.database
    if db.transaction_depth() > 0 or path in ("", ":memory:"):  # nested: the lock is ours already
        with db.atomic("IMMEDIATE"):
            yield
        return
    with _writers(path).queue(), db.atomic("IMMEDIATE"):
        yield


class _Writers:
    """The queue of writers to one SQLite file, in place of SQLite's busy handler.

    SQLite lets one writer in at a time and makes the others retry after sleeps that grow to
    100 ms, so under load the lock sits free while writers sleep: a profile of two busy
    worker processes found half their threads' time in BEGIN IMMEDIATE. Here a lock queues
    this process's threads and ``flock`` on ``<database>-writers`` the processes, looked at
    again every 0.2 ms. After the busy timeout a writer stops queueing and leaves it to SQLite.
    """

    poll_s = 0.0002

    def __init__(self, path: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._threads = threading.Lock()
        self._fd = os.open(f"{path}-writers", os.O_RDWR | os.O_CREAT, 0o644)

    @contextlib.contextmanager
    def queue(self) -> Iterator[None]:
        deadline = time.monotonic() + self.timeout_s
        if not self._threads.acquire(timeout=self.timeout_s):
            yield
            return
        try:
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        yield
                        return
                    time.sleep(self.poll_s)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


_writer_queues: dict[tuple[int, str], _Writers] = {}
_writer_queues_lock = threading.Lock()


def _writers(path: str) -> _Writers:
    # Per process: a forked child must not share its parent's open file (flock is per open file).
    key = (os.getpid(), path)
    with _writer_queues_lock:
        queue = _writer_queues.get(key)
        if queue is None:
            timeout_ms: Any = SQLITE_PRAGMAS["busy_timeout"]
            queue = _writer_queues[key] = _Writers(path, timeout_ms / 1000)
        return queue


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


#: Rows per INSERT statement in ``insert_rows``: within SQLite's limit of bound parameters.
INSERT_CHUNK = 500


def insert_rows(
    fields: Sequence[peewee.Field],
    rows: Sequence[Sequence[Any]],
    *,
    returning: Sequence[peewee.Field] = (),
    ignore_conflicts: bool = False,
) -> list[tuple[Any, ...]]:
    """Insert ``rows`` (values in ``fields`` order) with one multi-row ``INSERT`` per 500 rows.

    ``Model.insert_many`` without its statement building, which is most of its cost: a
    profile of the workflow steps found it a fifth of the CPU of each email. Values still go
    through their field's ``db_value``. Returns the ``returning`` columns of every row (SQLite
    3.35+ and PostgreSQL both speak RETURNING), in no promised order. ``ignore_conflicts``
    skips rows that break a unique constraint (``ON CONFLICT DO NOTHING``). Fields left out
    take their defaults.
    """
    model = fields[0].model
    # The columns left out get their field's default, as insert_many gives them.
    given = {f.name for f in fields}  # by name: a Field's == builds an SQL expression
    defaults = [f for f in model._meta.sorted_fields if f.name not in given and f.default is not None]
    if defaults:
        fields = [*fields, *defaults]
        rows = [(*row, *(f.default() if callable(f.default) else f.default for f in defaults)) for row in rows]
    table = model._meta.table_name
    columns = ", ".join(f'"{f.column_name}"' for f in fields)
    tail = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
    tail += " RETURNING " + ", ".join(f'"{f.column_name}"' for f in returning) if returning else ""
    marks = "(" + ", ".join([db.param] * len(fields)) + ")"
    converters = [f.db_value for f in fields]
    out: list[tuple[Any, ...]] = []
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[start : start + INSERT_CHUNK]
        params = [convert(value) for row in chunk for convert, value in zip(converters, row, strict=True)]
        sql = f'INSERT INTO "{table}" ({columns}) VALUES {", ".join([marks] * len(chunk))}{tail}'
        cursor = db.execute_sql(sql, params)
        if returning:
            out.extend(cursor.fetchall())
    return out


#: Fields whose values both drivers return as the field holds them: no ``python_value`` call.
#: Exact types: a subclass may convert (a JSON text field, say).
_NATIVE_FIELDS = frozenset({peewee.AutoField, peewee.IntegerField, peewee.CharField, peewee.TextField,
                            peewee.ForeignKeyField})

_M = TypeVar("_M", bound=peewee.Model)


def select_by_ids(
    model: type[_M],
    ids: Iterable[int],
    *,
    fields: Sequence[peewee.Field] = (),
    for_update: bool = False,
    extra: Mapping[str, str] | None = None,
) -> list[_M]:
    """``model.select(*fields).where(model.id.in_(ids)).order_by(model.id)`` as instances.

    What the workflow steps read for every batch, without Peewee's statement building (6 us
    per id of an IN list, 400 us per query of a whole row) and row wrapping: the statement is
    built once per shape, and only the values the drivers do not already return as the field
    holds them (dates, booleans) go through ``python_value``. Half the cost of the query it
    replaces (bench/RESULTS.md). ``for_update`` locks the rows in id order on PostgreSQL
    (SQLite's ``BEGIN IMMEDIATE`` has locked everything already). ``extra`` maps attribute
    names to SQL expressions read with each row (a scalar subquery, say).
    """
    chosen = tuple(fields) or tuple(model._meta.sorted_fields)
    extras = tuple((extra or {}).items())
    names = [f.name for f in chosen]
    converters = [(i, f.python_value) for i, f in enumerate(chosen) if type(f) not in _NATIVE_FIELDS]
    ordered = sorted(set(ids))
    out: list[_M] = []
    for start in range(0, len(ordered), INSERT_CHUNK):
        chunk = ordered[start : start + INSERT_CHUNK]
        sql = _select_by_ids_sql(model, tuple(names), extras, len(chunk), for_update and is_postgres(), db.param)
        for row in db.execute_sql(sql, chunk).fetchall():
            values = list(row)
            for i, convert in converters:
                if values[i] is not None:
                    values[i] = convert(values[i])
            instance = model(__no_default__=1)  # what Peewee's own row wrapper builds, field by field
            instance.__data__ = dict(zip(names, values[: len(names)], strict=True))
            for (attribute, _), value in zip(extras, values[len(names) :], strict=True):
                setattr(instance, attribute, value)
            out.append(instance)
    return out


@functools.lru_cache(maxsize=1024)
def _select_by_ids_sql(
    model: type[peewee.Model], names: tuple[str, ...], extras: tuple[tuple[str, str], ...], count: int, lock: bool,
    param: str,
) -> str:
    meta = model._meta
    columns = [f'"{meta.table_name}"."{meta.fields[name].column_name}"' for name in names]
    columns += [f'{expression} AS "{attribute}"' for attribute, expression in extras]
    primary_key = meta.primary_key
    assert isinstance(primary_key, peewee.Field), f"{model.__name__} has no single-column primary key"
    key = f'"{meta.table_name}"."{primary_key.column_name}"'
    return (
        f'SELECT {", ".join(columns)} FROM "{meta.table_name}" WHERE {key} IN ({", ".join([param] * count)})'
        f' ORDER BY {key}{" FOR UPDATE" if lock else ""}'
    )


@functools.lru_cache(maxsize=4096)
def _utc_text(value: datetime) -> str:
    # A batch writes the same few instants (its "now", the leases and timers made from it) into
    # many rows: a worker profile found strftime 6 % of its CPU. Equal instants in other zones
    # are equal keys, and give the same UTC text.
    return value.astimezone(UTC).strftime(UTCDateTimeField._format)


class UTCDateTimeField(peewee.Field):
    """An aware UTC datetime, stored fixed-width so SQLite's text comparisons order correctly."""

    field_type = "TIMESTAMP"
    _format = "%Y-%m-%d %H:%M:%S.%f"

    def db_value(self, value: datetime | None) -> str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC field")
        return _utc_text(value)

    def python_value(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            # Reads what db_value writes; strptime took 15 µs a value, a hot spot of every step.
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
