"""What every benchmark shares: the machine's description, medians, a real SMTP sink (Postfix's
C ``smtp-sink``), a fresh database, bulk loading, and Dramatiq worker processes.

Benchmarks use Redis database 13 (``BENCH_REDIS_URL``) and the PostgreSQL database
``invites_bench`` (``BENCH_PG_URL``); they flush and drop only those.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "var" / "bench"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/invites_bench")
DATABASES = ("sqlite", "postgres")


# --- Figures ------------------------------------------------------------------------------

def machine() -> str:
    """nproc, CPU model, memory, Python, load average: printed above every run's figures."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem_gib = kib / 1024 / 1024
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem_gib:.0f} GiB, Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {load():.2f}"
    )


def load() -> float:
    """The 1-minute load average (figures taken above ~0.5 are noisy on 2 cores)."""
    return os.getloadavg()[0]


@dataclass
class Figure:
    """Repeated measurements of one thing, reported as median and spread."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent."""
        if len(self.values) < 2 or self.median == 0:
            return 0.0
        return (max(self.values) - min(self.values)) / self.median * 100

    def __str__(self) -> str:
        return (f"{self.name}: {fmt(self.median)} {self.unit} "
                f"(median of {len(self.values)}, spread {self.spread_pct:.0f} %)")


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def verdict(label: str, ratio: float, target: float, *, at_most: bool = False) -> str:
    ok = ratio <= target if at_most else ratio >= target
    sign = "≤" if at_most else "≥"
    return f"{label}: {ratio:.2f}× (target {sign} {target}×) {'MET' if ok else 'MISSED'}"


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# {machine()}")
    print(f"# {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    sys.stdout.flush()


def time_per_call(fn: Callable[[], Any], *, min_time_s: float = 0.5) -> float:
    """Seconds per call of ``fn``, from enough calls to fill ``min_time_s``."""
    fn()
    calls, started = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_time_s:
            return elapsed / calls


# --- Postfix's smtp-sink ---------------------------------------------------------------------

def smtp_sink_binary() -> tuple[Path, Path]:
    """(smtp-sink, its library folder), extracted once from Debian's ``postfix`` package."""
    root = CACHE / "postfix"
    binary, libs = root / "usr/sbin/smtp-sink", root / "usr/lib/postfix"
    if binary.exists():
        return binary, libs
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # apt's sandbox user cannot write to a root-only temp dir: let it.
        os.chmod(tmp, 0o777)
        subprocess.run(["apt-get", "download", "postfix"], cwd=tmp, check=True, capture_output=True)
        [deb] = Path(tmp).glob("postfix_*.deb")
        staging = Path(tmp) / "x"
        subprocess.run(["dpkg", "-x", str(deb), str(staging)], check=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.move(str(staging), root)
    return binary, libs


class CountingSink:
    """A local SMTP sink that counts accepted messages: ``port``, ``_count`` and ``_changed`` are
    set by the subclass, which bumps the count under the condition and notifies."""

    port: int
    _count: int
    _changed: threading.Condition

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def count(self) -> int:
        with self._changed:
            return self._count

    def wait_for(self, n: int, timeout_s: float) -> float:
        """Block until ``n`` messages in all were accepted; returns ``perf_counter()`` then."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._count < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{type(self).__name__} accepted {self._count} of {n} messages")
                self._changed.wait(min(left, 0.05))
        return time.perf_counter()


class SmtpSink(CountingSink):
    """Postfix's ``smtp-sink`` on a free port, with a live count of accepted messages.

    ``-c`` makes it print ``sess=… quit=… mesg=N`` after every message; a thread reads them.
    """

    def __init__(self, backlog: int = 1000) -> None:
        binary, libs = smtp_sink_binary()
        self.port = free_port()
        env = {**os.environ, "LD_LIBRARY_PATH": str(libs)}
        self._proc = subprocess.Popen(
            [str(binary), "-u", "nobody", "-c", f"127.0.0.1:{self.port}", str(backlog)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self._count = 0
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        wait_for_port(self.port)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        pattern = re.compile(rb"mesg=(\d+)")
        buffer = b""
        while chunk := self._proc.stdout.read1(1 << 20):
            buffer += chunk
            *_, tail = buffer.rpartition(b"\r")
            found = pattern.findall(buffer)
            if found:
                with self._changed:
                    self._count = int(found[-1])
                    self._changed.notify_all()
            buffer = tail
            time.sleep(0.01)  # read in bulk: the counter needs no finer grain than 10 ms

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(5)


@contextlib.contextmanager
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    try:
        yield sink
    finally:
        sink.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# --- Redis ----------------------------------------------------------------------------------

def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def flush_redis() -> None:
    """Empty the benchmarks' own Redis database (never another one)."""
    assert urlparse(REDIS_URL).path not in ("", "/", "/0"), "benchmarks never flush Redis database 0"
    redis_client().flushdb()


# --- Database -------------------------------------------------------------------------------

def database_url(kind: str, folder: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'bench.db'}"
    if kind == "postgres":
        return PG_URL
    raise ValueError(f"unknown database {kind!r}")


def _recreate_pg(url: str) -> None:
    import psycopg2

    parts = urlparse(url)
    name = parts.path.lstrip("/")
    assert name.startswith("invites_bench"), "benchmarks only drop their own database"
    conn = psycopg2.connect(host=parts.hostname, port=parts.port or 5432, user=parts.username, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


@contextlib.contextmanager
def fresh_database(kind: str) -> Iterator[str]:
    """An empty database with the current schema, the engine pointed at it; yields its URL."""
    from engine.core import schema
    from engine.core.db import db, init_db

    with tempfile.TemporaryDirectory(prefix="bench-db-") as tmp:
        url = database_url(kind, Path(tmp))
        if kind == "postgres":
            _recreate_pg(url)
        init_db(url)
        db.connect(reuse_if_open=True)
        schema.upgrade()
        try:
            yield url
        finally:
            if not db.is_closed():
                db.close()
            db.obj.close_all() if hasattr(db.obj, "close_all") else None


def insert_rows(table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, page: int = 5000) -> None:
    """Raw bulk insert (``executemany``; ``execute_values`` on PostgreSQL), one transaction."""
    from engine.core.db import db, is_postgres

    names = ", ".join(f'"{c}"' for c in columns)
    with db.atomic():
        cursor = db.cursor()
        if is_postgres():
            from psycopg2.extras import execute_values

            execute_values(cursor, f'INSERT INTO "{table}" ({names}) VALUES %s', rows, page_size=page)
        else:
            marks = ", ".join("?" for _ in columns)
            cursor.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', rows)


def utc_text(when: datetime) -> str:
    """A datetime as ``UTCDateTimeField`` stores it."""
    from engine.core.db import UTCDateTimeField

    return str(UTCDateTimeField().db_value(when))


def make_practice(now: datetime, **settings: Any) -> int:
    from engine import create_practice

    return int(create_practice("Bench Vets", now=now, send_window=None, **settings).id)


def load_clients(practice_id: int, n: int, now: datetime, *, start: int = 0) -> list[int]:
    """``n`` clients with an email and consent; returns their ids."""
    from engine.core.models import Client

    before = _max_id(Client)
    stamp = utc_text(now)
    rows = [
        (practice_id, f"Client {i}", f"client{i}@example.test", True, stamp, stamp)
        for i in range(start, start + n)
    ]
    insert_rows("client", ("practice_id", "name", "primary_email", "email_consent", "created_at", "updated_at"), rows)
    return _ids_after(Client, before)


def _max_id(model: Any) -> int:
    from peewee import fn

    return int(model.select(fn.COALESCE(fn.MAX(model.id), 0)).scalar())


def _ids_after(model: Any, before: int) -> list[int]:
    return [r[0] for r in model.select(model.id).where(model.id > before).order_by(model.id).tuples()]


def load_invitations(
    practice_id: int,
    client_ids: Sequence[int],
    now: datetime,
    *,
    state: str = "queued",
    next_action_at: Callable[[int], datetime] | None = None,
    lease_until: datetime | None = None,
) -> list[int]:
    """One invitation per client in ``state``; due at ``now`` unless ``next_action_at(i)`` says."""
    from engine.core.models import Invitation

    before = _max_id(Invitation)
    stamp = utc_text(now)
    lease = utc_text(lease_until) if lease_until else None
    sent = stamp if state != "queued" else None
    expires = utc_text(now + timedelta(days=14)) if state != "queued" else None
    rows = [
        (
            practice_id, cid, f"client{cid}@example.test", state, 1,
            utc_text(next_action_at(i)) if next_action_at else stamp, lease, 0, "invite",
            "system:bench", stamp, sent, expires,
        )
        for i, cid in enumerate(client_ids)
    ]
    insert_rows(
        "invitation",
        ("practice_id", "client_id", "email", "state", "version", "next_action_at", "lease_until",
         "reminders_sent", "kind", "created_by", "created_at", "sent_at", "expires_at"),
        rows,
    )
    return _ids_after(Invitation, before)


def analyze() -> None:
    """Refresh the planner's statistics (autovacuum/``ANALYZE`` would, in production)."""
    from engine.core.db import db, is_postgres

    db.execute_sql("ANALYZE")
    if is_postgres():
        db.execute_sql("VACUUM (ANALYZE) invitation")


# --- Worker processes -----------------------------------------------------------------------

class Processes:
    """A command (e.g. a Dramatiq or Celery worker) as a subprocess with our environment."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None, log_path: Path | None = None,
                 processes: int = 1) -> None:
        self._log = open(log_path or os.devnull, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(args), cwd=ROOT, env={**os.environ, "BROKER_URL": REDIS_URL, **(env or {})},
            stdout=self._log, stderr=self._log, start_new_session=True,
        )
        self.processes = processes

    def children(self) -> list[int]:
        """The worker processes' pids (the CLI's main process only supervises them)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            return [int(p) for p in path.read_text().split()]
        return []

    def peak_rss_mib(self) -> list[float]:
        """Each worker process's peak resident memory so far (VmHWM), in MiB."""
        peaks = []
        for pid in self.children():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]) / 1024)
        return peaks

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the worker processes have used so far."""
        total = 0
        for pid in self.children():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until every Dramatiq worker process polls the broker (its heartbeat shows in Redis)."""
        client = redis_client()
        deadline = time.monotonic() + timeout_s
        while client.zcard("dramatiq:__heartbeats__") < self.processes:
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not start")
            time.sleep(0.05)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.proc.args[2:4]} exited with {self.proc.returncode}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the main process stops its workers (a group signal would kill them)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


@contextlib.contextmanager
def dramatiq_workers(module: str, *, processes: int = 2, threads: int = 8, queues: Sequence[str] = (),
                     env: dict[str, str] | None = None, log_path: Path | None = None) -> Iterator[Processes]:
    """``dramatiq <module> -p N -t T`` (the worker configuration every peer shares)."""
    args = [sys.executable, "-m", "dramatiq", module, "-p", str(processes), "-t", str(threads)]
    if queues:
        args += ["-Q", *queues]
    pool = Processes(args, env=env, log_path=log_path, processes=processes)
    try:
        yield pool
    finally:
        pool.stop()


@contextlib.contextmanager
def celery_workers(app: str, *, concurrency: int = 2, queue: str, log_path: Path | None = None) -> Iterator[Processes]:
    """``celery -A <app> worker -c N -P prefork`` on the benchmarks' Redis."""
    args = [sys.executable, "-m", "celery", "-A", app, "worker", "-c", str(concurrency), "-P", "prefork",
            "-Q", queue, "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    pool = Processes(args, log_path=log_path, processes=concurrency)
    try:
        yield pool
    finally:
        pool.stop()


def wait_drain_start(client: Any, key: str, total: int, timeout_s: float = 60.0) -> float:
    """``perf_counter()`` when the list ``key`` first holds fewer than ``total`` entries."""
    deadline = time.monotonic() + timeout_s
    while client.llen(key) >= total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody consumed {key}")
        time.sleep(0.0005)
    return time.perf_counter()


def wait_empty(client: Any, keys: Sequence[tuple[str, str]], timeout_s: float = 600.0, poll_s: float = 0.002) -> float:
    """``perf_counter()`` when every (kind, key) is empty: ``("list", k)`` or ``("hash", k)``."""
    deadline = time.monotonic() + timeout_s
    while True:
        pipe = client.pipeline(transaction=False)
        for kind, key in keys:
            pipe.llen(key) if kind == "list" else pipe.hlen(key)
        if not any(pipe.execute()):
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{keys} did not drain")
        time.sleep(poll_s)


def now_utc() -> datetime:
    return datetime.now(UTC)
