"""Mass invitation (admin): invite every client who can be invited and is not yet, in batches.

Built for practices with a hundred thousand clients and more. The clients are cut into
ranges of consecutive ids (a keyset walk, so a batch costs the same at the end as at the
start); each range is one transaction: one query reads its clients with their access row and
live invitation, the database builds the access rows, invitations and audit rows from the
batch sent as one value, and the nudges go after the commit. On PostgreSQL two ranges are
written at once. Running it twice invites nobody twice: the second run finds everyone it
invited ``already_active``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import peewee
from peewee import Case, Field, Select

from engine.core import audit, clock, validate
from engine.core.db import connection, db, is_postgres, write
from engine.core.errors import PortalOff
from engine.core.models import Client, Invitation, PortalAccess, Practice
from engine.core.settings import get_settings
from engine.operations import lookup, roles
from engine.operations.invitations import nudge
from workflows.invitation import LIVE_STATES, State

logger = logging.getLogger("invites.mass")

_LIVE = [s.value for s in LIVE_STATES]
#: Why a client was not invited, in the order they are checked.
SKIP_REASONS = ("disabled", "already_active", "no_email", "no_consent")
#: Called after each batch with (clients looked at so far, clients in the practice).
Progress = Callable[[int, int], None]


@dataclass
class MassInviteReport:
    """What a mass invitation did: who was invited, and who was skipped and why."""

    practice_id: int
    clients: int = 0
    invited: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    batches: int = 0
    enqueued: int = 0
    duration_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, batch: _Batch) -> None:
        self.batches += 1
        self.clients += batch.examined
        self.invited += len(batch.invitation_ids)
        self.enqueued += batch.enqueued
        for reason, count in batch.skipped.items():
            self.skipped[reason] += count


@dataclass(frozen=True)
class _Batch:
    examined: int
    invitation_ids: list[int]
    skipped: dict[str, int]
    enqueued: int


#: Batches in flight at once on PostgreSQL, each in its own transaction on its own connection.
#: The server's part of a batch (seven foreign-key checks and eleven index entries per
#: invitation) is most of its time, and a second backend does it on another core. SQLite lets
#: one writer in at a time, so there the batches go one after another.
POSTGRES_WRITERS = 2


def mass_invite(
    practice_id: int,
    *,
    by: str,
    batch_size: int = 1000,
    progress: Progress | None = None,
    now: datetime | None = None,
    writers: int | None = None,
) -> MassInviteReport:
    """Invite every client of the practice with an email, consent and no access (admin only).

    Skipped, and counted by reason: ``disabled`` (staff turned access off), ``already_active``
    (a live invitation, or signed in), ``no_email``, ``no_consent``. Each batch commits on its
    own, so an interrupted run keeps what it did and running it again finishes the rest.
    ``writers`` batches are written at once (default: ``POSTGRES_WRITERS`` on PostgreSQL, 1 on
    SQLite); the report and ``progress`` follow the batches in client order all the same.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "mass_invite")
    batch_size = validate.int_between(batch_size, 1, 10_000, field="batch_size")
    writers = validate.int_between(
        writers if writers is not None else POSTGRES_WRITERS if is_postgres() else 1, 1, 16, field="writers")
    started = time.perf_counter()
    practice = lookup.practice(practice_id)
    if not practice.portal_enabled:
        raise PortalOff("the client portal is switched off for this practice")
    total = Client.select().where(Client.practice == practice.id).count()
    report = MassInviteReport(practice.id)
    # The clients are cut into id ranges here, one after another; each range is then read and
    # written by a pool thread in one transaction, and nudged after its commit. Results are
    # taken in range order. An error stops new ranges; the ones in flight finish and commit.
    with _pool(writers) as pool:
        in_flight: deque[Future[_Batch]] = deque()

        def take_oldest() -> None:
            report.add(in_flight.popleft().result())
            if progress is not None:
                progress(report.clients, max(total, report.clients))

        for after, upto in _ranges(practice.id, size=batch_size):
            in_flight.append(pool.submit(_run_batch, practice.id, after=after, upto=upto, actor=actor, now=now))
            if len(in_flight) >= writers:
                take_oldest()
        while in_flight:
            take_oldest()
    report.duration_ms = round((time.perf_counter() - started) * 1000, 1)
    with write():
        audit.record(practice_id=practice.id, actor=actor, action="mass_invite", now=now,
                     detail={"invited": report.invited, "skipped": report.skipped, "clients": report.clients})
    logger.info("mass invitation done", extra={"action": "mass_invite", "practice_id": practice.id,
                                                "invited": report.invited, "clients": report.clients})
    return report


@contextlib.contextmanager
def _pool(writers: int) -> Iterator[Executor]:
    """Threads for several writers; for one, the calling thread and the connection it holds."""
    if writers > 1:
        with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="mass-invite") as pool:
            yield pool
    else:
        yield _Inline()


class _Inline(Executor):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            future.set_exception(error)
        return future


def _ranges(practice_id: int, *, size: int) -> Iterator[tuple[int, int]]:
    """The practice's clients cut into id ranges (after, upto] of ``size`` clients (the last one
    fewer), from ids read twenty ranges at a time."""
    after = 0
    while True:
        query: Any = (Client.select(Client.id).where((Client.practice == practice_id) & (Client.id > after))
                      .order_by(Client.id).limit(size * 20).tuples())
        ids = [int(client_id) for (client_id,) in query]
        for start in range(0, len(ids), size):
            upto = ids[min(start + size, len(ids)) - 1]
            yield after, upto
            after = upto
        if len(ids) < size * 20:
            return


def _run_batch(practice_id: int, *, after: int, upto: int, actor: str, now: datetime) -> _Batch:
    """One batch in its own transaction on this thread's connection; nudged after the commit."""
    with connection():
        for attempt in (1, 2):
            try:
                with write():
                    batch = _batch(practice_id, after=after, upto=upto, actor=actor, now=now)
                break
            except peewee.IntegrityError:
                # Someone invited one of these clients meanwhile: the second pass sees it as active.
                if attempt == 2:
                    raise
        # After the commit; a nudge that does not reach the broker is re-sent by the sweep.
        return replace(batch, enqueued=nudge(batch.invitation_ids) if batch.invitation_ids else 0)


class _Candidate(NamedTuple):
    id: int
    primary_email: str | None
    email_consent: bool | None
    access: str | None  # None: no access row yet; else "disabled", "signed_in" or "open"
    portal_email: str | None
    live_id: int | None


def _candidates(practice_id: int, *, after: int, upto: int) -> list[_Candidate]:
    """One query: the practice's clients with ids in (after, upto], each with its access row's
    facts and its live invitation.

    The batch of clients is cut first, and each client's access row and live invitation are
    fetched by a subquery on its key: one index probe a client, whatever the planner believes
    of the tables' sizes. (As joins, PostgreSQL planned a hash of the whole invitation table
    once a mass invitation had grown it past its statistics: 110 ms a batch instead of 7.)
    """
    batch: Any = (
        Client.select(Client.id, Client.primary_email, Client.email_consent)
        .where((Client.practice == practice_id) & (Client.id > after) & (Client.id <= upto))
        .alias("batch")
    )
    access = Case(None, ((PortalAccess.disabled_at.is_null(False), "disabled"),
                         (PortalAccess.first_signed_in_at.is_null(False), "signed_in")), "open")

    def of_access(column: Any) -> Any:
        return PortalAccess.select(column).where(PortalAccess.client == batch.c.id)

    # At most one live invitation per client (a unique index), so this is one value or none.
    live = Invitation.select(Invitation.id).where((Invitation.client == batch.c.id) & Invitation.state.in_(_LIVE))
    columns = [batch.c.id, batch.c.primary_email, batch.c.email_consent, of_access(access),
               of_access(PortalAccess.portal_email), live]
    query = Select([batch], columns).order_by(batch.c.id).bind(db).tuples()
    return [_Candidate(*row) for row in query]


def _reason(client: _Candidate) -> str | None:
    if client.access == "disabled":
        return "disabled"
    if client.live_id is not None or client.access == "signed_in":
        return "already_active"
    if not (client.portal_email or client.primary_email):
        return "no_email"
    if not client.email_consent:
        return "no_consent"
    return None


def _batch(practice_id: int, *, after: int, upto: int, actor: str, now: datetime) -> _Batch:
    """Inside a transaction: invite the eligible clients of one range (not nudged yet)."""
    if not Practice.get_by_id(practice_id).portal_enabled:
        raise PortalOff("the client portal was switched off during the mass invitation")
    rows = _candidates(practice_id, after=after, upto=upto)
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    chosen: list[tuple[int, str, bool]] = []
    for client in rows:
        reason = _reason(client)
        if reason is None:
            chosen.append((client.id, str(client.portal_email or client.primary_email), client.access is not None))
        else:
            skipped[reason] += 1
    invitation_ids = _write(practice_id, chosen, actor=actor, now=now) if chosen else []
    return _Batch(len(rows), invitation_ids, skipped, enqueued=0)


def _write(practice_id: int, chosen: list[tuple[int, str, bool]], *, actor: str, now: datetime) -> list[int]:
    """Write the chosen clients' (id, address, has an access row) rows; returns the invitations' ids.

    An access row for each client without one (the model's default permissions), a queued
    invitation (version 1, due now, leased to the nudge after the commit) and its ``invited``
    audit row. The batch goes to the database as one value (PostgreSQL arrays, SQLite JSON)
    and the database builds the rows: a profile found most of the time of multi-row
    ``INSERT … VALUES`` in making and parsing their parameters, three to eleven a row. On
    PostgreSQL the three inserts are one statement, the invitations' ids flowing into their
    audit rows inside the server.
    """
    lease_until = now + timedelta(seconds=get_settings().step_lease_s)
    params: dict[str, Any] = {
        "practice": practice_id, "now": Invitation.created_at.db_value(now), "actor": actor,
        "lease_until": Invitation.lease_until.db_value(lease_until), "queued": State.QUEUED.value,
        **{f"default_{f.name}": f.db_value(f.default() if callable(f.default) else f.default)
           for f in _ACCESS_DEFAULTS},
    }
    if is_postgres():
        params.update(clients=[client_id for client_id, _, _ in chosen], emails=[a for _, a, _ in chosen],
                      new_access=[not has_access for _, _, has_access in chosen])
        return [int(invitation_id) for (invitation_id,) in db.execute_sql(_postgres_sql(), params).fetchall()]
    access, invitations, audit_rows = _sqlite_sql()
    params["batch"] = json.dumps(chosen)
    db.execute_sql(access, params)
    created = db.execute_sql(invitations, params).fetchall()
    db.execute_sql(audit_rows, {**params, "created": json.dumps(created)})
    return [int(invitation_id) for invitation_id, _, _ in created]


#: PortalAccess columns a new row takes from the model's defaults (permissions).
_ACCESS_DEFAULTS: list[Field] = [
    f for f in PortalAccess._meta.sorted_fields
    if f.default is not None and f.name not in ("client", "practice", "updated_at")
]
#: The three inserts, written once for both databases: ``{p[name]}`` is a parameter; the row
#: source and its columns are the database's own (``_postgres_sql``, ``_sqlite_sql``).
_ACCESS_SQL = (
    "INSERT INTO portal_access (client_id, practice_id, updated_at, {default_columns}) "
    "SELECT {client}, {p[practice]}, {p[now]}, {default_values} FROM {source} WHERE {new_access} "
    "ON CONFLICT DO NOTHING"
)
_INVITATION_SQL = (
    "INSERT INTO invitation (practice_id, client_id, email, state, version, next_action_at, lease_until, "
    "reminders_sent, kind, created_by, created_at) "
    "SELECT {p[practice]}, {client}, {email}, {p[queued]}, 1, {p[now]}, {p[lease_until]}, 0, 'invite', "
    "{p[actor]}, {p[now]} FROM {source} WHERE true RETURNING id, client_id, email"
)
_AUDIT_SQL = (
    "INSERT INTO audit_event (practice_id, client_id, invitation_id, at, actor, action, detail) "
    "SELECT {p[practice]}, {client}, {invitation}, {p[now]}, {p[actor]}, 'invited', {detail} "
    "FROM {source} WHERE true"
)


class _Params(dict[str, str]):
    """Placeholders in the driver's style: ``p["now"]`` is ``%(now)s`` (psycopg2) or ``:now`` (sqlite3)."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style

    def __missing__(self, name: str) -> str:
        return self.style.format(name)


def _defaults(p: _Params) -> dict[str, str]:
    return {"default_columns": ", ".join(f.column_name for f in _ACCESS_DEFAULTS),
            "default_values": ", ".join(p[f"default_{f.name}"] for f in _ACCESS_DEFAULTS)}


@functools.cache
def _postgres_sql() -> str:
    p = _Params("%({})s")
    chosen = {"source": "chosen", "client": "client_id", "email": "email"}
    return (
        "WITH chosen AS (SELECT * FROM unnest(%(clients)s::integer[], %(emails)s::text[], "
        "%(new_access)s::boolean[]) AS t(client_id, email, new_access)), "
        f"access AS ({_ACCESS_SQL.format(p=p, new_access='new_access', **chosen, **_defaults(p))}), "
        f"created AS ({_INVITATION_SQL.format(p=p, **chosen)}), "
        "audited AS (" + _AUDIT_SQL.format(
            p=p, source="created", client="client_id", invitation="id",
            detail="jsonb_build_object('kind', 'invite', 'mass', true, 'to', email)::text") + ") "
        "SELECT id FROM created"
    )


@functools.cache
def _sqlite_sql() -> tuple[str, str, str]:
    p = _Params(":{}")
    # The batch is a JSON array of [client id, address, has an access row]; the created
    # invitations come back as [id, client id, address]. (json_extract, not ->>: SQLite 3.37
    # is still common.)
    item = "json_extract(value, '$[{}]')".format
    batch = {"source": "json_each(:batch)", "client": item(0), "email": item(1)}
    return (
        _ACCESS_SQL.format(p=p, new_access=f"NOT {item(2)}", **batch, **_defaults(p)),
        _INVITATION_SQL.format(p=p, **batch),
        _AUDIT_SQL.format(p=p, source="json_each(:created)", client=item(1), invitation=item(0),
                          detail=f"json_object('kind', 'invite', 'mass', json('true'), 'to', {item(2)})"),
    )
