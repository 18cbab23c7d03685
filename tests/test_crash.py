"""Crashes for real: nothing lost, nothing sent twice but in the documented window.

Real processes, killed for real: two ``dramatiq worker`` processes (SIGKILL, several times, some
from inside the SMTP conversation: after the server stored the message, before the worker heard
back), a private ``redis-server`` (killed and restarted empty: every queued message is lost), and
``scheduler.py`` (killed, restarted). Clients are invited by a process of their own meanwhile;
then the clock of every process moves three days (``CLOCK_OFFSET_FILE``) and the reminders go
out under the same treatment.

Then every invitation is in the right state, none is lost, and the SMTP sink holds one email per
(invitation, step), or copies of it with the same ``Message-ID`` where a kill fell between the
server's acceptance and the worker's commit. The time from each SIGKILL until the last
invitation it stranded was done is measured and compared with ``STEP_LEASE_S``: the sweep
re-enqueues after the lease, without waiting for Dramatiq's own redelivery of a dead worker's
messages (60 s of silent heartbeat, then a random maintenance pass).

The normal run invites 200 clients on SQLite; ``-m long`` invites 2,000 on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import redis

from engine.core.clock import FileOffsetClock
from tests.faults import VENV_BIN, PrivateRedis, Processes, ScriptedSmtp, children, run_smtp, socket_owner

LEASE_S = 5
SWEEP_INTERVAL_S = 1
STEP_TIME_LIMIT_MS = 4000
WORKERS = 2
THREADS = 8
REMINDER_AFTER_S = 3 * 86_400 + 60

INVITER = """
import pathlib, sys, time
import engine
from engine.core.db import connection
from engine.core.runtime import boot

boot()
count, pause_s, quota_file = int(sys.argv[1]), float(sys.argv[2]), pathlib.Path(sys.argv[3])
with connection():
    practice = engine.create_practice("Crash Test Vets", send_window=None)
    admin = engine.create_staff(practice.id, "Ada Admin", "ada@crash.test", "admin")
    by = f"staff:{admin.id}"
    n = 0
    while n < count:
        if n >= int(quota_file.read_text() or 0):  # the test says how far to go before its next fault
            time.sleep(0.02)
            continue
        client = engine.create_client(practice.id, f"Client {n}", by=by, email=f"c{n}@crash.test", consent=True)
        engine.invite(practice.id, client.id, by=by)
        n += 1
        time.sleep(pause_s)
print("done", flush=True)
"""

#: What to break: "smtp" kills the worker holding the next SMTP conversation right after the
#: server stored the message; "random" kills a worker at no particular moment; "redis" kills
#: Redis and starts it again empty.
Fault = str


@dataclass
class Plan:
    """How many clients, on which database, and what to break at which share of a phase's work."""

    clients: int
    database_url: str
    invite_pause_s: float
    invitations: tuple[tuple[float, Fault], ...] = ((0.1, "smtp"), (0.35, "random"), (0.55, "redis"),
                                                    (0.75, "smtp"))
    #: The scheduler is killed as phase two starts; these come after its restart.
    reminders: tuple[tuple[float, Fault], ...] = ((0.0, "smtp"),)
    timeout_s: float = 240


@dataclass
class Kill:
    """One SIGKILL of a worker, what it stranded, and how long each stranded step took to come back.

    A stranded invitation is *requeued* when a sweep claims it again after the kill (its new lease
    says when: ``lease_until - STEP_LEASE_S``), or when it is done, whichever comes first; it is
    *recovered* when its step is done. Requeueing is what the lease bounds; finishing a large
    stranded batch also takes the time to send it.
    """

    phase: str
    how: str
    at: float  # time.monotonic()
    wall: float  # time.time(): Dramatiq's heartbeats are wall-clock
    engine_at: datetime  # the engines' clock (wall clock plus CLOCK_OFFSET_FILE)
    examined: bool = False
    stranded: set[int] = field(default_factory=set)
    requeued_s: dict[int, float] = field(default_factory=dict)
    recovered_at: float | None = None

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.at

    def track(self, left: set[int], leases: dict[int, datetime | None]) -> None:
        """Note what came back since the last look (``leases``: lease_until of stranded ones left)."""
        if not self.examined or self.recovered_at is not None:
            return
        now = time.monotonic()
        for invitation_id in self.stranded - set(self.requeued_s):
            lease = leases.get(invitation_id)
            claimed = lease - timedelta(seconds=LEASE_S) if lease is not None else None
            if invitation_id not in left:
                self.requeued_s[invitation_id] = now - self.at
            elif claimed is not None and claimed >= self.engine_at:
                self.requeued_s[invitation_id] = (claimed - self.engine_at).total_seconds()
        if not self.stranded & left:
            self.recovered_at = now

    @property
    def requeue_s(self) -> float | None:
        if not self.stranded:
            return 0.0
        return max(self.requeued_s.values()) if len(self.requeued_s) == len(self.stranded) else None


class Chaos:
    """The processes of one run, and the faults done to them."""

    def __init__(self, tmp: Path, plan: Plan) -> None:
        self.tmp, self.plan = tmp, plan
        self.procs = Processes(tmp)
        self.redis = PrivateRedis(self.procs)
        self.sink = ScriptedSmtp(on_accept=self._on_accept)
        self.smtp_port = 0
        self.offset_file = tmp / "clock-offset"
        FileOffsetClock.write(str(self.offset_file), 0)
        self.environment: dict[str, str] = {}
        self.workers: list[Any] = [None] * WORKERS
        self.scheduler: Any = None
        self.kills: list[Kill] = []
        self.armed = False  # the sink kills the worker of the next accepted message
        self.later: list[tuple[float, Callable[[], None]]] = []  # restarts to come
        self.lock = threading.Lock()
        self.phase = "invitations"
        self.next_victim = count()
        self.redis_restarts = 0
        self.scheduler_kills = 0
        self.unexpected_worker_exits = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "PYTEST"))}
        env.update(
            DATABASE_URL=self.plan.database_url,
            BROKER_URL=self.redis.url,
            MAIL_URL=f"smtp://127.0.0.1:{self.smtp_port}",
            STEP_LEASE_S=str(LEASE_S),
            SWEEP_INTERVAL_S=str(SWEEP_INTERVAL_S),
            STEP_TIME_LIMIT_MS=str(STEP_TIME_LIMIT_MS),
            SMTP_TIMEOUT_S="2",
            RETRY_MIN_BACKOFF_MS="200",
            RETRY_MAX_BACKOFF_MS="2000",
            MAX_DELIVERY_ATTEMPTS="30",
            CLOCK_OFFSET_FILE=str(self.offset_file),
            LOG_FORMAT="text",
            PYTHONUNBUFFERED="1",
        )
        return env

    # --- workers ----------------------------------------------------------------------------------

    def start_worker(self, slot: int) -> None:
        self.workers[slot] = self.procs.start(
            f"worker-{slot}",
            [str(VENV_BIN / "dramatiq"), "worker", "--processes", "1", "--threads", str(THREADS)],
            self.environment,
        )

    def worker_pids(self) -> dict[int, int]:
        """slot → pid of the process running the actors (the dramatiq CLI forks one)."""
        pids = {}
        for slot, proc in enumerate(self.workers):
            if proc is not None and proc.poll() is None:
                found = children(proc.pid)
                if found:
                    pids[slot] = found[0]
        return pids

    def kill_worker(self, how: str, pid: int | None = None) -> bool:
        with self.lock:
            pids = self.worker_pids()
            if pid is None and pids:
                pid = list(pids.values())[next(self.next_victim) % len(pids)]
            if pid is None or pid not in pids.values():
                return False
            offset = timedelta(seconds=float(self.offset_file.read_text() or 0))
            self.kills.append(Kill(self.phase, how, time.monotonic(), time.time(), datetime.now(UTC) + offset))
            os.kill(pid, signal.SIGKILL)
            return True

    def _on_accept(self, message: Any, peer: tuple[str, int]) -> None:
        # In the SMTP server's thread, after the message is stored and before the reply: the worker
        # holding this connection dies between the server's acceptance and its own commit.
        if not self.armed:
            return
        owner = socket_owner(peer[1], self.smtp_port, self.worker_pids().values())
        if owner is not None and self.kill_worker("in SMTP", owner):
            self.armed = False

    def watch_workers(self, left: set[int]) -> None:
        """A dramatiq CLI exits when its worker process dies: note what that stranded, restart it."""
        for slot, proc in enumerate(self.workers):
            if proc.poll() is None:
                continue
            with self.lock:
                pending = [k for k in self.kills if not k.examined]
                if not pending:
                    self.unexpected_worker_exits += 1
                self.start_worker(slot)
        for kill in self.kills:
            # Wait until a live worker has surely sent a heartbeat since the kill.
            if not kill.examined and time.monotonic() - kill.at > 1.5:
                kill.examined = True
                # A message stays unacknowledged while its step runs: what the dead worker held
                # covers what it was sending too (unless Redis was restarted since, and lost it).
                kill.stranded = self.in_flight(dead_since=kill.wall) & left
                if not kill.stranded:
                    kill.recovered_at = kill.at

    def in_flight(self, *, dead_since: float) -> set[int]:
        """Invitations of messages fetched, never acknowledged, by workers silent since ``dead_since``."""
        client = redis.Redis.from_url(self.redis.url, socket_connect_timeout=1)
        ids: set[int] = set()
        try:
            # Alive just before the kill, silent since: the killed process (not one that died earlier,
            # whose unacknowledged messages Dramatiq keeps until its own maintenance requeues them).
            dead = {b.decode() for b, seen_ms in client.zrange("dramatiq:__heartbeats__", 0, -1, withscores=True)
                    if dead_since - 3 <= seen_ms / 1000 < dead_since}
            for key in client.scan_iter("dramatiq:__acks__.*"):
                _, broker_id, queue = key.decode().split(".", 2)
                if broker_id not in dead:
                    continue
                for message_id in client.smembers(key):
                    raw = client.hget(f"dramatiq:{queue}.msgs", message_id)
                    args = (json.loads(raw).get("args") or [None]) if raw else [None]
                    first = args[0] if args else None
                    ids.update(first if isinstance(first, list) else [first] if isinstance(first, int) else [])
        except redis.RedisError:
            pass  # Redis is down or was restarted: what it held is gone anyway
        finally:
            client.close()
        return ids

    # --- scheduler and Redis ------------------------------------------------------------------------

    def start_scheduler(self) -> None:
        self.scheduler = self.procs.start("scheduler", [sys.executable, "scheduler.py"], self.environment)

    def kill_scheduler(self, down_s: float) -> None:
        self.procs.stop(self.scheduler, signal.SIGKILL)
        self.scheduler_kills += 1
        self.later.append((time.monotonic() + down_s, self.start_scheduler))

    def kill_redis(self, down_s: float) -> None:
        self.redis.kill()
        self.later.append((time.monotonic() + down_s, self._restart_redis))

    def _restart_redis(self) -> None:
        self.redis.start()  # empty: every queued message is gone
        self.redis_restarts += 1

    def run_due(self) -> None:
        now = time.monotonic()
        for item in [i for i in self.later if i[0] <= now]:
            self.later.remove(item)
            item[1]()

    def fault(self, kind: Fault) -> None:
        if kind == "smtp":
            self.armed = True
        elif kind == "random":
            self.kill_worker("random")
        elif kind == "redis":
            self.kill_redis(1.0)
        else:
            raise ValueError(kind)

    def settled(self) -> bool:
        """No fault in progress: every kill recovered, every restart done, nothing armed."""
        return not self.armed and not self.later and all(k.recovered_at is not None for k in self.kills)


# --- reading the database ------------------------------------------------------------------------

def _progress(phase: str) -> tuple[int, set[int]]:
    """How many invitations finished the phase's step, and which have not."""
    from engine.core.models import Invitation

    rows = list(Invitation.select(Invitation.id, Invitation.state, Invitation.reminders_sent).tuples())
    done = {i for i, state, reminders in rows if (state != "queued" if phase == "invitations" else reminders >= 1)}
    return len(done), {i for i, _, _ in rows} - done


def _leases(ids: set[int]) -> dict[int, datetime | None]:
    from engine.core.models import Invitation

    query = Invitation.select(Invitation.id, Invitation.lease_until).where(Invitation.id.in_(list(ids)))
    return dict(query.tuples())


def run_crash(tmp: Path, plan: Plan) -> dict[str, Any]:
    from engine.core import schema
    from engine.core.db import connection, db, init_db

    init_db(plan.database_url)
    with connection():
        schema.drop_all()
        schema.upgrade()
    chaos = Chaos(tmp, plan)
    n = plan.clients
    started = time.monotonic()
    deadline = started + plan.timeout_s

    def watch(phase: str) -> tuple[int, set[int]]:
        """One look at the run: progress, dead workers restarted, recoveries noted, restarts due."""
        if time.monotonic() > deadline:
            raise AssertionError(f"{phase}: not done after {plan.timeout_s} s; logs in {tmp}")
        time.sleep(0.05)
        with connection():
            done, left = _progress(phase)
            chaos.watch_workers(left)
            watched = set().union(*(k.stranded for k in chaos.kills if k.recovered_at is None)) & left
            leases = _leases(watched) if watched else {}
        for kill in chaos.kills:
            kill.track(left, leases)
        chaos.run_due()
        return done, left

    def until(phase: str, condition: Callable[[int], bool]) -> None:
        while not condition(watch(phase)[0]):
            pass

    def invitations(inviter: Any) -> None:
        """Phase one: invite up to each fault's share, break, invite on; each fault on its own."""
        chaos.phase = "invitations"
        faults = sorted(plan.invitations)
        for i, (share, kind) in enumerate(faults):
            at = int(share * n)
            release(at)
            until("invitations", lambda done, at=at: done >= at and chaos.settled())
            following = int(faults[i + 1][0] * n) if i + 1 < len(faults) else n
            if kind == "random":  # a kill with work in flight: let some more start first
                release(following)
                enough = min(at + max(2, n // 50), following - 1)
                until("invitations", lambda done, enough=enough: done >= enough)
                chaos.fault(kind)
            else:  # "smtp" kills on the next email, "redis" breaks the next invitations' nudges
                chaos.fault(kind)
                release(following)
        release(n)
        until("invitations", lambda done: done == n and inviter.poll() is not None and chaos.settled())

    def reminders() -> None:
        """Phase two: the faults at their share of the reminders (no pacing: the sweep claims all)."""
        chaos.phase = "reminders"
        faults = sorted(plan.reminders)
        while True:
            done, _ = watch("reminders")
            if faults and chaos.settled() and done >= faults[0][0] * n and done < n:
                chaos.fault(faults.pop(0)[1])
            if done == n:
                chaos.armed = False  # no email is left to kill a worker in
                if chaos.settled():
                    return

    quota = tmp / "quota"
    quota.write_text("0")

    def release(upto: int) -> None:
        tmp_file = tmp / "quota.tmp"
        tmp_file.write_text(str(upto))
        os.replace(tmp_file, quota)

    try:
        chaos.redis.start()
        with run_smtp(chaos.sink) as smtp_port:
            chaos.smtp_port = smtp_port
            chaos.environment = chaos.env()
            for slot in range(WORKERS):
                chaos.start_worker(slot)
            chaos.start_scheduler()
            inviter = chaos.procs.start(
                "inviter", [sys.executable, "-c", INVITER, str(n), str(plan.invite_pause_s), str(quota)],
                chaos.environment,
            )
            # Phase one: the invitations go out while workers and Redis break
            invitations(inviter)
            assert inviter.returncode == 0, (tmp / "inviter.log").read_text()[-3000:]
            # Phase two, three days later: the scheduler dies first, so every reminder (and every
            # recovery) waits for the restarted one; then the reminders go, and workers break again.
            chaos.kill_scheduler(2.0)
            FileOffsetClock.write(str(chaos.offset_file), REMINDER_AFTER_S)
            reminders()
            # Stop the workers gracefully (they finish what they hold) before counting
            for proc in chaos.workers:
                chaos.procs.stop(proc, signal.SIGTERM, timeout_s=30)
            chaos.procs.stop(chaos.scheduler, signal.SIGTERM)
        return check_outcome(chaos, plan, time.monotonic() - started)
    finally:
        chaos.procs.stop_all()
        if not db.is_closed():
            db.close()


def check_outcome(chaos: Chaos, plan: Plan, elapsed: float) -> dict[str, Any]:
    from engine.core.db import connection
    from engine.core.models import Invitation, OutboxEmail

    n = plan.clients
    with connection():
        invitations = list(Invitation.select())
        outbox = list(OutboxEmail.select())
    # Every invitation is there, and ended where it should: reminded once, still live
    assert len(invitations) == n
    assert Counter(i.state for i in invitations) == {"reminded": n}
    assert all(i.reminders_sent == 1 and i.last_error is None for i in invitations)
    # One outbox row per (invitation, step), each sent
    assert len(outbox) == 2 * n and {o.status for o in outbox} == {"sent"}
    assert len({(o.invitation_id, o.kind) for o in outbox}) == 2 * n
    # The sink: each step's email at least once; a copy only ever with the same Message-ID
    by_id = {o.message_id: o for o in outbox}
    copies = Counter(str(m["Message-ID"]) for m in chaos.sink.accepted)
    assert set(copies) == set(by_id), "an email went out that no step owed, or a step's email never did"
    for message in chaos.sink.accepted:
        assert message["To"].addresses[0].addr_spec == by_id[str(message["Message-ID"])].to_email
    assert len({(m["To"].addresses[0].addr_spec, str(m["Message-ID"])) for m in chaos.sink.accepted}) == 2 * n
    duplicates = sum(c - 1 for c in copies.values())
    measured = [k for k in chaos.kills if k.stranded]
    report = {
        "clients": n,
        "database": plan.database_url.split(":", 1)[0],
        "worker_sigkills": len(chaos.kills),
        "worker_sigkills_in_smtp": sum(1 for k in chaos.kills if k.how == "in SMTP"),
        "redis_restarts": chaos.redis_restarts,
        "scheduler_kills": chaos.scheduler_kills,
        "emails": len(chaos.sink.accepted),
        "duplicates_same_message_id": duplicates,
        "stranded_per_kill": [len(k.stranded) for k in chaos.kills],
        "requeued_after_s": [round(k.requeue_s or -1, 2) for k in measured],
        "recovered_after_s": [round(k.recovery_s or -1, 2) for k in measured],
        "step_lease_s": LEASE_S,
        "sweep_interval_s": SWEEP_INTERVAL_S,
        "step_time_limit_s": STEP_TIME_LIMIT_MS / 1000,
        "unexpected_worker_exits": chaos.unexpected_worker_exits,
        "elapsed_s": round(elapsed, 1),
    }
    print("\ncrash test:", json.dumps(report))
    assert report["worker_sigkills"] >= 3 and report["worker_sigkills_in_smtp"] >= 2
    assert chaos.redis_restarts == 1 and chaos.scheduler_kills == 1
    assert chaos.unexpected_worker_exits == 0, "a worker died that nobody killed"
    # A copy needs a kill between acceptance and commit: at most a batch per thread of the dead worker
    from workflows.actors import NUDGE_BATCH

    assert 1 <= duplicates <= report["worker_sigkills"] * THREADS * NUDGE_BATCH
    # Every stranded step is claimed again by a sweep once its lease runs out: bounded by our
    # lease, where Dramatiq alone would wait 60 s of heartbeat silence, then a random maintenance.
    assert measured, "no kill stranded anything: the test proved nothing"
    requeue_bound = LEASE_S + 2 * SWEEP_INTERVAL_S + 2
    assert all(k.requeue_s is not None and k.requeue_s < requeue_bound for k in measured), report
    # and done soon after: a half-sent email is taken over once its claim is stale (at worst one
    # lease more), plus the time to send what was stranded (20 ms an email is slow enough here).
    for kill in measured:
        assert kill.recovery_s is not None
        assert kill.recovery_s < 2 * LEASE_S + 2 * SWEEP_INTERVAL_S + 3 + len(kill.stranded) / 50, report
    return report


@pytest.mark.same_wall_clock
def test_crash_kill_workers_redis_and_scheduler_lose_nothing(tmp_path: Path) -> None:
    plan = Plan(clients=200, database_url=f"sqlite:///{tmp_path / 'crash.db'}", invite_pause_s=0.03)
    run_crash(tmp_path, plan)


@pytest.mark.long
@pytest.mark.same_wall_clock
def test_crash_long_2000_clients_on_postgres(tmp_path: Path) -> None:
    from tests.conftest import TEST_PG_DSN, _postgres_ready

    if _postgres_ready() is None:
        pytest.skip("PostgreSQL is not reachable")
    plan = Plan(
        clients=2000, database_url=TEST_PG_DSN, invite_pause_s=0.01,
        invitations=((0.05, "smtp"), (0.2, "random"), (0.35, "smtp"), (0.5, "random"), (0.6, "redis"),
                     (0.75, "random"), (0.9, "smtp")),
        reminders=((0.0, "smtp"),),
        timeout_s=900,
    )
    run_crash(tmp_path, plan)
