"""Database faults: SQLite busy under concurrent writers, PostgreSQL connections killed mid-run.

SQLite serialises writers. With the engine's ``BEGIN IMMEDIATE`` and busy timeout a writer waits
for the lock instead of failing, so staff calls, the CLI, the workers and the sweep all get
through while another process keeps the database busy. On PostgreSQL, a connection the server
drops (``pg_terminate_backend``, a failover, an idle timeout) is noticed when the pool hands it
out again: the next message runs on a fresh connection.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest

import engine
from engine.core.db import connection, db, is_postgres, is_sqlite
from engine.core.models import Invitation, OutboxEmail
from engine.core.settings import get_settings
from tests.faults import ROOT, wait_for
from workflows.actors import enqueue_steps
from workflows.sweep import sweep

LOCKED = "database is locked"


def _all_records_text(records: list[logging.LogRecord]) -> str:
    return "\n".join(r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
                     for r in records)


# --- SQLite: busy, and nobody sees "database is locked" ------------------------------------

HOG = """
import os, sqlite3, sys, time, pathlib
path, hold_s, gap_s, stop = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), pathlib.Path(sys.argv[4])
parent = os.getppid()
conn = sqlite3.connect(path, timeout=30, isolation_level=None)
holds = 0
while not stop.exists() and os.getppid() == parent:  # and never outlives the test
    conn.execute("BEGIN IMMEDIATE")   # the write lock, as a long write of another process holds it
    time.sleep(hold_s)
    conn.execute("COMMIT")
    holds += 1
    time.sleep(gap_s)
print(holds, flush=True)
"""


@pytest.fixture
def lock_hog(broker: Any, database_url: str, tmp_path: Path) -> Iterator[Any]:
    """Another process that holds SQLite's write lock most of the time, until told to stop."""
    if not is_sqlite():
        pytest.skip("SQLite's write lock (PostgreSQL has row locks)")
    path = database_url.split("://", 1)[1][1:]
    stop = tmp_path / "stop-hog"
    proc = subprocess.Popen([sys.executable, "-c", HOG, path, "0.15", "0.03", str(stop)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    class Hog:
        def finish(self) -> int:
            stop.touch()
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            return int(out.strip())

    try:
        yield Hog()
    finally:
        if proc.poll() is None:
            stop.touch()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_sqlite_busy_never_reaches_a_user(practice, client_factory, staff_by, clock, worker, sink, lock_hog,
                                          database_url, caplog, process_env):
    caplog.set_level(logging.WARNING)
    settings = get_settings()
    # Given clients to invite, and another process holding the write lock 80 % of the time
    clients = [client_factory(email=f"busy{n}@example.test") for n in range(40)]
    errors: list[BaseException] = []
    waits: list[float] = []
    stop_sweeping = threading.Event()

    def staff_calls(mine: list[Any]) -> None:
        with connection():
            for client in mine:
                started = time.monotonic()
                try:
                    engine.invite(practice.id, client.id, by=staff_by)
                    engine.portal_status(practice.id, client.id)
                except BaseException as exc:  # noqa: BLE001 - every failure is the finding
                    errors.append(exc)
                waits.append(time.monotonic() - started)

    def scheduler() -> None:
        # A sweeper that sees every lease as run out: it claims and nudges whatever is queued.
        with connection():
            while not stop_sweeping.is_set():
                try:
                    sweep(clock.now() + timedelta(seconds=settings.step_lease_s + 1), enqueue=enqueue_steps,
                          lease_s=settings.step_lease_s)
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
                time.sleep(0.05)

    # When four staff members invite at once while the workers deliver and the scheduler sweeps
    callers = [threading.Thread(target=staff_calls, args=(clients[i::4],)) for i in range(4)]
    sweeper = threading.Thread(target=scheduler)
    for thread in [*callers, sweeper]:
        thread.start()
    # and a person uses the CLI in the middle of it
    env = process_env(DATABASE_URL=database_url, INVITES_ACTOR=staff_by)
    extra = client_factory(email="cli@example.test")
    cli = subprocess.run([sys.executable, "-m", "engine.cli", "invite", str(practice.id), str(extra.id)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    for thread in callers:
        thread.join(timeout=120)
    stop_sweeping.set()
    sweeper.join(timeout=60)
    holds = lock_hog.finish()
    worker.drain()

    # Then every call got through, however long it had to wait
    assert errors == []
    assert cli.returncode == 0, cli.stderr
    assert LOCKED not in cli.stdout + cli.stderr
    assert holds >= 5 and max(waits) >= 0.05, "the database was never busy: the test proved nothing"
    # and every invitation was delivered once, with no "database is locked" anywhere
    for client in [*clients, extra]:
        assert Invitation.get(Invitation.client == client.id).state == "sent"
        assert len(sink.to(client.primary_email)) == 1
    assert LOCKED not in _all_records_text(caplog.records)
    print(f"\nSQLite busy: {holds} lock holds by another process; "
          f"slowest staff call {max(waits) * 1000:.0f} ms, median {sorted(waits)[len(waits) // 2] * 1000:.0f} ms")


# --- PostgreSQL: connections dropped by the server -----------------------------------------

def _terminate_backends(database_url: str, *, spare: set[int]) -> int:
    """Kill every server connection to the test database except ``spare``; returns how many."""
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND NOT (pid = ANY(%s))",
                (list(spare),),
            )
            return int(cur.fetchone()[0])
    finally:
        admin.close()


@pytest.fixture
def postgres_only(broker: Any) -> None:
    if not is_postgres():
        pytest.skip("pg_terminate_backend is PostgreSQL's")


def _failures(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.getMessage().startswith("Failed to process message")]


def test_postgres_connection_dropped_between_messages_the_next_one_reconnects(
    postgres_only, practice, client_factory, staff_by, clock, worker, sink, database_url, caplog
):
    caplog.set_level(logging.INFO)
    mine = {int(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])}
    # Given workers that delivered before, so the pool holds their connections
    before = [client_factory(email=f"before{n}@example.test") for n in range(8)]
    for client in before:
        engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    # When the server drops every connection of the engine
    killed = _terminate_backends(database_url, spare=mine)
    assert killed >= 1
    # Then the next messages run on fresh connections: delivered, and not one failed attempt
    caplog.clear()
    after = [client_factory(email=f"after{n}@example.test") for n in range(8)]
    for client in after:
        engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    for client in [*before, *after]:
        assert Invitation.get(Invitation.client == client.id).state == "sent"
        assert len(sink.to(client.primary_email)) == 1
    assert _failures(caplog.records) == []


def test_postgres_connections_dropped_mid_run_lose_nothing(
    postgres_only, practice, client_factory, staff_by, clock, worker, sink, database_url, caplog
):
    caplog.set_level(logging.INFO)
    settings = get_settings()
    mine = {int(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])}
    clients = [client_factory(email=f"mid{n}@example.test") for n in range(60)]
    # When the server drops the workers' connections three times while they deliver
    kills: list[int] = []

    def terminator() -> None:
        for _ in range(3):
            wait_for(lambda: len(sink.messages) > len(kills) * 15 + 5, timeout_s=60, what="deliveries")
            kills.append(_terminate_backends(database_url, spare=mine))

    thread = threading.Thread(target=terminator)
    thread.start()
    for client in clients:
        engine.invite(practice.id, client.id, by=staff_by)
    thread.join(timeout=120)
    worker.drain()
    # and whatever a killed step left half-done is picked up once its lease and claim run out
    clock.advance(seconds=settings.step_lease_s + settings.step_time_limit_ms / 1000 + 1)
    sweep(clock.now(), enqueue=enqueue_steps, lease_s=settings.step_lease_s)
    worker.drain()
    # Then every invitation is sent; an email sent twice carries one Message-ID
    duplicates = 0
    for client in clients:
        inv = Invitation.get(Invitation.client == client.id)
        assert inv.state == "sent", (inv.id, inv.state, inv.last_error)
        got = sink.to(client.primary_email)
        assert len({m["Message-ID"] for m in got}) == 1
        duplicates += len(got) - 1
    assert OutboxEmail.select().where(OutboxEmail.status != "sent").count() == 0
    hit = len(_failures(caplog.records))
    assert sum(kills) >= 3
    print(f"\nPostgreSQL: {sum(kills)} connections killed in 3 rounds; {hit} steps hit mid-flight "
          f"and retried; {duplicates} duplicate emails (same Message-ID)")
