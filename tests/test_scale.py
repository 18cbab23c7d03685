"""Scale-out (issue 6): concurrent sweepers, pool sizing, and a fleet of worker and scheduler
processes against one PostgreSQL and one Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest

import engine
from engine.core.clock import FileOffsetClock, use_clock
from engine.core.db import connection, db, init_db
from engine.core.models import Client, Invitation, OutboxEmail
from engine.core.settings import Settings, configure, get_settings
from tests.conftest import TEST_PG_DSN, RunningWorker
from workflows.sweep import claim_due

ROOT = Path(__file__).resolve().parent.parent
DRAMATIQ = str(Path(sys.executable).parent / "dramatiq")


def postgres_only(test: Callable[..., Any]) -> Callable[..., Any]:
    """Run a test about PostgreSQL (its pool, a fleet of processes) on its half only."""
    test = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)(test)
    return pytest.mark.skipif(
        "postgres" not in os.environ.get("TEST_DATABASES", "sqlite,postgres"),
        reason="TEST_DATABASES leaves PostgreSQL out",
    )(test)


# --- helpers ----------------------------------------------------------------------------------

def due_invitations(count: int, now: datetime) -> list[int]:
    """``count`` queued invitations, due at ``now`` and under no lease (written in bulk)."""
    practice = engine.create_practice("Scale Vets", now=now)
    with db.atomic():
        Client.insert_many(
            [
                {"practice": practice.id, "name": f"Client {n}", "primary_email": f"c{n}@scale.test",
                 "email_consent": True, "created_at": now, "updated_at": now}
                for n in range(count)
            ]
        ).execute()
        clients = [c.id for c in Client.select(Client.id).where(Client.practice == practice.id)]
        Invitation.insert_many(
            [
                {"practice": practice.id, "client": client_id, "email": f"c{n}@scale.test", "state": "queued",
                 "next_action_at": now - timedelta(seconds=1), "created_by": "system:test", "created_at": now}
                for n, client_id in enumerate(clients)
            ]
        ).execute()
    return [i.id for i in Invitation.select(Invitation.id)]


def process_env(**extra: str) -> dict[str, str]:
    """The tests' environment (Redis database, short retries) plus JSON logs and ``extra``."""
    return {**os.environ, "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **extra}


def wait_for(what: str, predicate: Callable[[], bool], timeout_s: float, on_timeout: Callable[[], str]) -> None:
    """Poll ``predicate`` while other processes work (never a wait for a schedule)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{on_timeout()}")
        time.sleep(0.05)


# --- point 1: concurrent claims ---------------------------------------------------------------

CLAIMER = r"""
import json, os, sys, time
from datetime import datetime
from engine.core.db import connection, init_db
from workflows.sweep import claim_due

init_db(os.environ["DATABASE_URL"])
now, go = datetime.fromisoformat(sys.argv[1]), sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.005)
batches = []
with connection():
    while ids := claim_due(now, limit=10, lease_s=300):
        batches.append(ids)
        time.sleep(0.005)  # the enqueue a real sweep does between claims
print(json.dumps(batches), flush=True)
"""


def test_concurrent_sweepers_in_threads_never_claim_an_invitation_twice(broker, clock):
    # Given 600 due invitations
    ids = due_invitations(600, clock.now())
    # When four sweepers claim small batches at the same moment, each on its own connection
    start = threading.Barrier(4)
    claimed: list[list[int]] = [[] for _ in range(4)]

    def sweeper(mine: list[int]) -> None:
        start.wait()
        with connection():
            while batch := claim_due(clock.now(), limit=10, lease_s=300):
                mine.extend(batch)

    threads = [threading.Thread(target=sweeper, args=(mine,)) for mine in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then every invitation was claimed exactly once, and the work was shared
    everything = [i for mine in claimed for i in mine]
    assert sorted(everything) == sorted(ids)
    assert sum(1 for mine in claimed if mine) >= 2
    # and a claimed invitation is not claimed again while its lease runs
    assert claim_due(clock.now() + timedelta(seconds=299), limit=1000, lease_s=300) == []


def test_concurrent_sweepers_in_processes_never_claim_an_invitation_twice(broker, clock, database_url, tmp_path):
    # Given 600 due invitations and three sweeper processes ready to start together
    ids = due_invitations(600, clock.now())
    go = tmp_path / "go"
    env = process_env(DATABASE_URL=database_url)
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, clock.now().isoformat(), str(go)], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
        # When they all claim at once
        go.touch()
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    # Then no invitation was claimed by two of them, and none was missed
    batches = [json.loads(out) for out, _ in outputs]
    everything = [i for mine in batches for batch in mine for i in batch]
    assert sorted(everything) == sorted(ids), [err[-2000:] for _, err in outputs]
    assert sum(1 for mine in batches if mine) >= 2


# --- point 1: pool sizing -------------------------------------------------------------------

def _app_connections(application_name: str) -> int:
    conn = psycopg2.connect(TEST_PG_DSN)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application_name,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


@postgres_only
def test_worker_threads_never_exhaust_a_pool_as_big_as_their_number(broker, clock, database_url, sink):
    threads = 4
    # Given 150 invitations whose first step waits on the broker
    practice = engine.create_practice("Pool Vets", now=clock.now(), send_window=None)
    admin = engine.create_staff(practice.id, "Ada", "ada@pool.test", "admin", now=clock.now())
    for n in range(150):
        engine.create_client(practice.id, f"Client {n}", email=f"p{n}@pool.test", consent=True, invite=True,
                             by=f"staff:{admin.id}", now=clock.now())
    # and a process whose pool has exactly one connection per worker thread, and no more users
    name = "invites_pool_test"
    db.close()
    db.obj.close_all()
    init_db(f"{database_url}?max_connections={threads}&application_name={name}")
    db.obj._wait_timeout = 0.01  # an empty pool fails the message at once instead of waiting 30 s
    # When a worker with that many threads works through them all
    running = RunningWorker(broker, threads=threads)
    running.worker.start()
    try:
        running.drain(timeout_ms=60_000)
    finally:
        running.worker.stop()
    # Then every step ran: no thread ever found the pool empty
    with connection():
        states = Counter(i.state for i in Invitation.select(Invitation.state))
        errors = [i.last_error for i in Invitation.select().where(Invitation.last_error.is_null(False))]
    assert states == {"sent": 150} and errors == []
    assert len({m["Message-ID"] for m in sink.messages}) == 150
    # and PostgreSQL saw at most one connection per thread
    assert 1 <= _app_connections(name) <= threads
    db.obj.close_all()


def test_worker_with_more_threads_than_pooled_connections_refuses_to_start(tmp_path):
    # Given a pool of 2 connections and a worker asked for 4 threads
    env = process_env(DATABASE_URL=f"{TEST_PG_DSN}?max_connections=2")
    # When it starts, it stops at once and says how to fix it
    run = subprocess.run([DRAMATIQ, "--processes", "1", "--threads", "4", "worker"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "add ?max_connections=4 (or more) to DATABASE_URL" in run.stderr


# --- point 2: a fleet of processes --------------------------------------------------------------

@dataclass
class Fleet:
    """``dramatiq`` worker processes and ``scheduler.py`` processes, logs in files, all stopped at exit."""

    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, workers: int, threads: int, schedulers: int) -> None:
        for n in range(workers):
            self._spawn(f"worker{n}", [DRAMATIQ, "--processes", "1", "--threads", str(threads), "worker"])
        for n in range(schedulers):
            self._spawn(f"scheduler{n}", [sys.executable, str(ROOT / "scheduler.py")])

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()

    def lines(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines of one process (Dramatiq's own text lines are left out)."""
        out = []
        for line in (self.logs / f"{name}.log").read_text(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise AssertionError(f"processes died: {dead}\n{self.tail()}")

    def tail(self, chars: int = 1500) -> str:
        return "\n".join(
            f"--- {name} ---\n{(self.logs / f'{name}.log').read_text(errors='replace')[-chars:]}" for name in self.procs
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    started: list[Fleet] = []

    def make(env: dict[str, str]) -> Fleet:
        started.append(Fleet(env, tmp_path))
        return started[-1]

    yield make
    for one in started:
        one.stop()


def run_fleet(*, clients: int, workers: int, threads: int, database_url: str, smtp_port: int, sink: Any,
              fleet: Callable[..., Fleet], tmp_path: Path, timeout_s: float) -> None:
    """Invite ``clients`` clients, move time through reminders and expiry, check every email went once."""
    offset_file = str(tmp_path / "clock_offset")
    FileOffsetClock.write(offset_file, 0)
    previous_clock = use_clock(FileOffsetClock(offset_file))
    # The API's lease must outlast a few hundred first sends, or the sweep would rightly take some over.
    configure(Settings(**{**get_settings().__dict__, "step_lease_s": 600}))
    try:
        crew = fleet(process_env(
            DATABASE_URL=database_url, MAIL_URL=f"smtp://127.0.0.1:{smtp_port}", CLOCK_OFFSET_FILE=offset_file,
            SWEEP_INTERVAL_S="1", SWEEP_BATCH_SIZE="25", STEP_LEASE_S="600", SMTP_TIMEOUT_S="30",
        ))
        crew.start(workers=workers, threads=threads, schedulers=2)

        # Given a practice that sends at any hour, and its clients invited by callers in parallel
        practice = engine.create_practice("Fleet Vets", send_window=None)
        by = f"staff:{engine.create_staff(practice.id, 'Ada', 'ada@fleet.test', 'admin').id}"

        def invite(n: int) -> int:
            with connection():
                client = engine.create_client(practice.id, f"Client {n}", email=f"f{n}@fleet.test", consent=True,
                                              invite=True, by=by)
                return int(client.id)

        with ThreadPoolExecutor(4) as pool:
            client_ids = list(pool.map(invite, range(clients)))
        # A third sign in after the invitation, a third after the first reminder, a third never.
        early, late, never = client_ids[0::3], client_ids[1::3], client_ids[2::3]

        def sent() -> int:
            return int(OutboxEmail.select().where(OutboxEmail.status == "sent").count())

        def wait_sent(count: int) -> None:
            def done() -> bool:
                crew.check_alive()
                return sent() >= count

            wait_for(f"{count} emails sent", done, timeout_s, crew.tail)

        def move_clock(days: float) -> None:
            FileOffsetClock.write(offset_file, timedelta(days=days, minutes=1).total_seconds())

        def sign_in(ids: list[int]) -> None:
            for client_id in ids:
                engine.record_sign_in(practice.id, client_id)

        # When the fleet sends the invitations
        wait_sent(clients)
        sign_in(early)
        # and three days later the schedulers' sweeps hand the first reminders to the workers
        move_clock(3)
        wait_sent(clients + len(late) + len(never))
        sign_in(late)
        move_clock(7)
        wait_sent(clients + len(late) + 2 * len(never))
        move_clock(14)

        def all_expired() -> bool:
            crew.check_alive()
            expired = Invitation.select().where(Invitation.state == "expired").count()
            return bool(expired == len(never))

        wait_for("the unused invitations to expire", all_expired, timeout_s, crew.tail)
        # and a month later, after both schedulers have swept twice more, nothing else happens
        runs = {name: _sweeps_run(crew, name) for name in ("scheduler0", "scheduler1")}
        move_clock(45)
        wait_for("two more sweeps by each scheduler",
                 lambda: all(_sweeps_run(crew, name) >= runs[name] + 2 for name in runs), 30, crew.tail)
        crew.stop()

        # Then every email went exactly once per (invitation, step), to the right clients
        ids = Counter(m["Message-ID"] for m in sink.messages)
        assert [mid for mid, n in ids.items() if n > 1] == []
        invitation_of = {i.client_id: i.id for i in Invitation.select()}
        expected = {f"inv-{invitation_of[c]}-invitation" for c in client_ids}
        expected |= {f"inv-{invitation_of[c]}-reminder-1" for c in late + never}
        expected |= {f"inv-{invitation_of[c]}-reminder-2" for c in never}
        assert {mid.strip("<>").split("@")[0] for mid in ids} == expected
        # every invitation ended where it should
        state_of = {i.client_id: i.state for i in Invitation.select()}
        assert Counter(state_of[c] for c in early + late) == {"signed_in": len(early) + len(late)}
        assert Counter(state_of[c] for c in never) == {"expired": len(never)}
        # and the two schedulers together claimed each due step once: reminders 1 and 2, expiry
        claims = sum(line["claimed"] for name in runs for line in crew.lines(name) if line.get("action") == "sweep")
        assert claims == len(late) + 3 * len(never), crew.tail()
    finally:
        use_clock(previous_clock)


def _sweeps_run(crew: Fleet, name: str) -> int:
    return sum(1 for line in crew.lines(name) if "executed successfully" in line.get("msg", ""))


@postgres_only
def test_many_workers_and_two_schedulers_send_each_email_once(broker, database_url, smtp_server, sink, fleet,
                                                              tmp_path):
    run_fleet(clients=300, workers=3, threads=4, database_url=database_url, smtp_port=smtp_server[1], sink=sink,
              fleet=fleet, tmp_path=tmp_path, timeout_s=60)


@pytest.mark.long
@postgres_only
def test_many_workers_and_two_schedulers_send_each_email_once_long(broker, database_url, smtp_server, sink, fleet,
                                                                   tmp_path):
    run_fleet(clients=2000, workers=4, threads=8, database_url=database_url, smtp_port=smtp_server[1], sink=sink,
              fleet=fleet, tmp_path=tmp_path, timeout_s=300)
