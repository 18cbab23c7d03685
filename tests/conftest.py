"""Shared fixtures: real Redis, a real database (SQLite file and PostgreSQL), a real SMTP sink,
real Dramatiq worker threads, and the engine's clock under the test's control."""

from __future__ import annotations

import os

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# Settings are read once per process, and actor options when the actors are declared: set the
# tests' own before anything imports the engine. Mail and database are set per test.
os.environ.update(
    BROKER_URL=TEST_REDIS_URL,
    STEP_LEASE_S="60",
    RETRY_MIN_BACKOFF_MS="20",
    RETRY_MAX_BACKOFF_MS="100",
    MAX_DELIVERY_ATTEMPTS="3",
    SMTP_TIMEOUT_S="5",
    STEP_TIME_LIMIT_MS="20000",
    PORTAL_BASE_URL="https://portal.test",
)

import email
import email.policy
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller
from dramatiq.middleware import Middleware

from engine.core import clock as engine_clock
from engine.core.db import db, init_db
from engine.core.settings import Settings
from tests.faults import free_port

TEST_PG_DSN = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/invites_test")
# Runs in parallel on one RabbitMQ need a vhost each (rabbitmqctl add_vhost), as they need a
# PostgreSQL database each: the queue names are fixed.
TEST_AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
IN_CI = bool(os.environ.get("CI"))
# A fixed date keeps the tests of time zones, DST and send windows the same all year round. A
# test's clock is its own: a subprocess or service it starts reads the wall clock, so every
# subprocess gets its environment from ``process_env``, which hands it the test's clock.
START = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)  # a Tuesday, 10:00 UTC


# --- SMTP sink ---------------------------------------------------------------------------

@dataclass
class SinkHandler:
    messages: list[email.message.EmailMessage] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    #: When set, DATA is answered with this reply instead of accepting (e.g. "451 4.3.0 later").
    reply: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.reply:
                return self.reply
            self.raw.append(envelope.original_content or envelope.content)
            self.messages.append(
                email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
            )
        return "250 2.0.0 OK"

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()
            self.raw.clear()
            self.reply = None

    def to(self, address: str) -> list[email.message.EmailMessage]:
        with self.lock:
            return [m for m in self.messages if m["To"].addresses[0].addr_spec == address]


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[tuple[SinkHandler, int]]:
    handler = SinkHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


@pytest.fixture
def sink(smtp_server: tuple[SinkHandler, int]) -> Iterator[SinkHandler]:
    handler, _ = smtp_server
    handler.clear()
    yield handler
    handler.clear()


# --- Redis --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        if IN_CI:
            pytest.fail(f"Redis is not reachable at {TEST_REDIS_URL}")
        pytest.skip(f"Redis is not reachable at {TEST_REDIS_URL}")
    return client


# --- Databases ------------------------------------------------------------------------------

def _postgres_ready() -> str | None:
    """Create the tests' own PostgreSQL database if the server answers; None if it does not."""
    from urllib.parse import urlparse

    import psycopg2

    url = urlparse(TEST_PG_DSN)
    try:
        conn = psycopg2.connect(host=url.hostname, port=url.port or 5432, user=url.username,
                                password=url.password, dbname="postgres", connect_timeout=3)
    except psycopg2.OperationalError:
        return None
    conn.autocommit = True
    name = url.path.lstrip("/")
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return TEST_PG_DSN


def _backends() -> list[str]:
    return [b.strip() for b in os.environ.get("TEST_DATABASES", "sqlite,postgres").split(",") if b.strip()]


@pytest.fixture(scope="session", params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'invites.db'}"
    url = _postgres_ready()
    if url is None:
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable at {_without_password(TEST_PG_DSN)}")
        pytest.skip(f"PostgreSQL is not reachable at {_without_password(TEST_PG_DSN)}: "
                    "the PostgreSQL half is skipped (TEST_DATABASES=sqlite says so up front)")
    return url


def _without_password(url: str) -> str:
    from urllib.parse import urlparse

    password = urlparse(url).password
    return url.replace(f":{password}@", ":***@", 1) if password else url


@pytest.fixture(scope="session")
def base_settings(smtp_server: tuple[SinkHandler, int], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    _, port = smtp_server
    return Settings.from_env({**os.environ, "MAIL_URL": f"smtp://127.0.0.1:{port}"})


@pytest.fixture(scope="session")
def engine_runtime(base_settings: Settings, redis_client: redis.Redis) -> Iterator[Any]:
    """Boot the engine once: settings, broker (the tests' Redis database), actors."""
    from engine.core import runtime

    runtime.boot(base_settings)
    import workflows.actors  # noqa: F401 - declares the actors on that broker
    yield runtime.broker()


@pytest.fixture(scope="session")
def broker_backend(request: pytest.FixtureRequest) -> str:
    """The broker a test runs on: Redis, unless the test module asks for both (``both_brokers``)."""
    return str(getattr(request, "param", "redis"))


def both_brokers() -> pytest.MarkDecorator:
    """``pytestmark = both_brokers()``: the module's tests run on Redis and on RabbitMQ.

    Redis on every database of ``TEST_DATABASES``; RabbitMQ on the first one only (SQLite by
    default): the broker is what differs, and the suite stays fast.
    """
    combos = [(name, "redis") for name in _backends()] + [(_backends()[0], "rabbitmq")]
    return pytest.mark.parametrize(
        ("database_url", "broker_backend"), combos, indirect=True, ids=[f"{d}-{b}" for d, b in combos]
    )


class Outstanding(Middleware):
    """Dramatiq middleware counting messages enqueued and not yet acked or nacked.

    RabbitMQ's queue counts leave out the messages workers hold unacked, so ``broker.join``
    cannot tell when the work is done; this count can (one process, no flush while it runs).
    """

    def __init__(self) -> None:
        self.count = 0
        self.changed = threading.Condition()

    def _add(self, n: int) -> None:
        with self.changed:
            self.count += n
            self.changed.notify_all()

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        self._add(1)

    def after_ack(self, broker: Any, message: Any) -> None:
        self._add(-1)

    after_nack = after_ack

    def reset(self) -> None:
        with self.changed:
            self.count = 0

    def wait(self, timeout_ms: int) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.count <= 0, timeout=timeout_ms / 1000):
                raise TimeoutError(f"{self.count} messages still outstanding after {timeout_ms} ms")


@pytest.fixture(scope="session")
def rabbitmq_broker(base_settings: Settings) -> Iterator[Any]:
    """Our broker built for ``TEST_AMQP_URL``; the RabbitMQ half is skipped when it does not answer."""
    import pika

    from engine.core.broker import build_broker

    params = pika.URLParameters(TEST_AMQP_URL)
    params.connection_attempts, params.socket_timeout = 1, 3
    try:
        pika.BlockingConnection(params).close()
    except pika.exceptions.AMQPError as exc:
        if IN_CI:
            pytest.fail(f"RabbitMQ is not reachable at {TEST_AMQP_URL}: {exc!r}")
        pytest.skip(f"RabbitMQ is not reachable at {TEST_AMQP_URL} ({exc!r}): the RabbitMQ half is skipped")
    rabbit = build_broker(Settings(**{**base_settings.__dict__, "broker_url": TEST_AMQP_URL}))
    rabbit.outstanding = Outstanding()
    rabbit.add_middleware(rabbit.outstanding)
    yield rabbit
    rabbit.close()


@pytest.fixture(scope="session")
def active_broker(engine_runtime: Any, broker_backend: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The broker of ``broker_backend`` with the actors bound to it (Redis again after)."""
    if broker_backend == "redis":
        yield engine_runtime
        return
    import dramatiq

    from workflows import actors

    rabbit = request.getfixturevalue("rabbitmq_broker")
    # This thread's connection was closed when the last RabbitMQ module ended, or, idle since,
    # dropped by the server's heartbeat check (pika sends heartbeats only while it is called):
    # forget it, and the next use opens a new one.
    del rabbit.connection
    actors.bind(rabbit)
    dramatiq.set_broker(rabbit)
    yield rabbit
    actors.bind(engine_runtime)
    dramatiq.set_broker(engine_runtime)
    rabbit.close()  # an idle connection would be dropped by the server's heartbeat check later


@pytest.fixture
def broker(active_broker: Any, database_url: str, base_settings: Settings,
           redis_client: redis.Redis) -> Iterator[Any]:
    """A clean database and broker for one test; yields the broker."""
    from engine.core import schema
    from engine.core.settings import configure
    from workflows import actors

    configure(Settings(**{**base_settings.__dict__, "database_url": database_url}))
    actors.reset_transport()
    init_db(database_url)
    db.connect(reuse_if_open=True)
    schema.drop_all()
    schema.upgrade()
    redis_client.flushdb()
    if hasattr(active_broker, "outstanding"):
        active_broker.flush_all()
        active_broker.outstanding.reset()
    yield active_broker
    active_broker.flush_all()
    redis_client.flushdb()
    if not db.is_closed():
        db.close()


class SharedClock(engine_clock.ManualClock):
    """The test's clock, shared with every subprocess the test starts.

    A ``ManualClock`` that writes each move to a file; a subprocess given ``CLOCK_OFFSET_FILE``
    (``process_env``) reads its "now" from there, so the test, its worker threads, the CLI and the
    worker processes it starts all agree on the time, whatever the date the suite runs on.
    """

    def __init__(self, start: datetime, path: Path) -> None:
        super().__init__(start)
        self.path = path
        self._publish()

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        when = super().advance(delta, **kwargs)
        self._publish()
        return when

    def set(self, when: datetime) -> None:
        super().set(when)
        self._publish()

    def _publish(self) -> None:
        engine_clock.FileOffsetClock.write_fixed(str(self.path), self.now())


@pytest.fixture
def clock(broker: Any, tmp_path: Path) -> Iterator[SharedClock]:
    shared = SharedClock(START, tmp_path / "clock")
    previous = engine_clock.use_clock(shared)
    yield shared
    engine_clock.use_clock(previous)


@pytest.fixture
def process_env() -> Callable[..., dict[str, str]]:
    """``process_env(**extra)``: the environment for a subprocess this test starts.

    The tests' settings plus ``extra``; where the test runs on its ``clock``, the subprocess's
    clock is that one (``CLOCK_OFFSET_FILE``), and moves when the test moves it.
    """

    def make(**extra: str) -> dict[str, str]:
        env = {**os.environ, **extra}
        current = engine_clock.get_clock()
        if isinstance(current, SharedClock):
            env["CLOCK_OFFSET_FILE"] = str(current.path)
        return env

    return make


# --- Worker ---------------------------------------------------------------------------------

class RunningWorker:
    def __init__(self, broker: Any, threads: int = 4) -> None:
        import dramatiq

        self.broker = broker
        self.worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=50)

    def drain(self, timeout_ms: int = 30_000) -> None:
        """Wait until every queue is empty and every in-flight message is done."""
        from engine.core.broker import QUEUES

        if hasattr(self.broker, "outstanding"):  # RabbitMQ: its queue counts miss unacked messages
            self.broker.outstanding.wait(timeout_ms)
            self.worker.join()
            return
        for _ in range(3):  # a step may enqueue a follow-up (retries, failure handler)
            for queue in QUEUES:
                self.broker.join(queue, timeout=timeout_ms)
            self.worker.join()


@pytest.fixture
def worker(broker: Any) -> Iterator[RunningWorker]:
    running = RunningWorker(broker)
    running.worker.start()
    yield running
    running.worker.stop()


# --- Factories ------------------------------------------------------------------------------

@pytest.fixture
def practice_factory(clock: engine_clock.ManualClock) -> Callable[..., Any]:
    from engine import create_practice, create_staff

    def make(name: str = "Happy Paws Vet", **settings: Any) -> Any:
        practice = create_practice(name, now=clock.now(), **settings)
        practice.admin = create_staff(practice.id, "Ada Admin", "ada@happypaws.test", "admin", now=clock.now())
        practice.standard = create_staff(
            practice.id, "Sam Staff", "sam@happypaws.test", "standard", by=f"staff:{practice.admin.id}",
            now=clock.now(),
        )
        return practice

    return make


@pytest.fixture
def practice(practice_factory: Callable[..., Any]) -> Any:
    return practice_factory()


@pytest.fixture
def staff_by(practice: Any) -> str:
    return f"staff:{practice.standard.id}"


@pytest.fixture
def client_factory(clock: engine_clock.ManualClock, practice: Any) -> Callable[..., Any]:
    from engine import create_client

    counter = iter(range(1, 10**6))

    def make(practice_: Any = None, *, name: str | None = None, email: str | None = "", consent: bool = True,
             **kwargs: Any) -> Any:
        n = next(counter)
        p = practice_ or practice
        address = f"client{n}@example.test" if email == "" else email
        return create_client(p.id, name or f"Client {n}", email=address, consent=consent,
                             by=f"staff:{p.standard.id}", now=clock.now(), **kwargs)

    return make


# --- Logs -------------------------------------------------------------------------------------

class AllRecords(logging.Handler):
    """Every log record of every logger, at DEBUG, from every thread (peewee's SQL included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        # The message, its arguments, every extra field, and any traceback: unformatted, so the
        # formatters' redaction safety net cannot hide what the code itself logged.
        out = []
        for r in self.records:
            if r.name.startswith("mail."):  # aiosmtpd: the test's SMTP sink, not the engine
                continue
            out.append(f"{r.name} {r.getMessage()} {r.__dict__!r}")
            if r.exc_info:
                out.append(logging.Formatter().formatException(r.exc_info))
        return "\n".join(out)


@pytest.fixture
def all_logs() -> Iterator[AllRecords]:
    handler = AllRecords()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


# --- Helpers for reading emails -------------------------------------------------------------

def links(message: email.message.EmailMessage) -> dict[str, str]:
    """The sign-in and set-password URLs of an invitation or reminder, from the text part."""
    import re

    text = message.get_body(preferencelist=("plain",)).get_content()
    found = re.findall(r"https?://\S+", text)
    out = {}
    for url in found:
        if "set-password" in url:
            out["set_password"] = url
        elif "/p/" in url:
            out.setdefault("sign_in", url)
    return out


def token_of(message: email.message.EmailMessage) -> str:
    from urllib.parse import parse_qs, urlparse

    return parse_qs(urlparse(links(message)["set_password"]).query)["token"][0]


def tests_dir() -> Path:
    return Path(__file__).parent


# --- The summary of what was skipped ---------------------------------------------------------

def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Each reason for a skip once, with how many tests it skipped (a missing service skips many)."""
    from collections import Counter

    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        _, _, reason = report.longrepr if isinstance(report.longrepr, tuple) else ("", 0, str(report.longrepr))
        reasons[reason.removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.section("skipped, by reason")
        for reason, count in reasons.most_common():
            terminalreporter.line(f"{count:5d}  {reason}")


# --- The HTTP API: a real uvicorn process -----------------------------------------------------

class ApiServer:
    """``invites api`` running as its own process on a free port, for one database."""

    def __init__(self, base_url: str, clock_link: Path, process: Any) -> None:
        self.base_url = base_url
        self.clock_link = clock_link
        self.process = process


@pytest.fixture(scope="module")
def api_server(database_url: str, base_settings: Settings,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One server for a module's tests: each test points its clock link at that test's clock."""
    import subprocess
    import sys

    import httpx

    from tests.faults import wait_for

    port = free_port()
    link = tmp_path_factory.mktemp("api") / "clock"
    env = {**os.environ, "DATABASE_URL": database_url, "MAIL_URL": base_settings.mail_url,
           "CLOCK_OFFSET_FILE": str(link)}
    process = subprocess.Popen([sys.executable, "-m", "engine.cli", "api", "--port", str(port),
                                "--log-level", "warning"], env=env, cwd=tests_dir().parent)
    base_url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"invites api exited with {process.returncode}")
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout_s=30, what="invites api to answer /healthz")
    yield ApiServer(base_url, link, process)
    process.terminate()
    process.wait(timeout=10)


class Api:
    """An HTTP client of the test's API server, and keys made for it."""

    def __init__(self, server: ApiServer) -> None:
        import httpx

        self.server = server
        self.http = httpx.Client(base_url=server.base_url, timeout=30)

    def key(self, practice: Any = None, scopes: str = "invite,staff,portal,ops", name: str = "booking") -> str:
        """A new API key: of ``practice`` (a row or id), or a platform key when None."""
        from engine.operations.api_keys import create_key

        practice_id = getattr(practice, "id", practice)
        return create_key(practice_id, name, scopes).key

    def headers(self, key: str, *, staff: Any = None, practice: Any = None, idem: str | None = None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {key}"}
        if staff is not None:
            out["X-Acting-Staff"] = str(getattr(staff, "id", staff))
        if practice is not None:
            out["X-Practice-Id"] = str(getattr(practice, "id", practice))
        if idem is not None:
            out["Idempotency-Key"] = idem
        return out


@pytest.fixture
def api(api_server: ApiServer, clock: SharedClock) -> Iterator[Api]:
    """The module's API server, on this test's clock and clean database."""
    temp = api_server.clock_link.with_suffix(".new")
    temp.unlink(missing_ok=True)
    temp.symlink_to(clock.path)
    os.replace(temp, api_server.clock_link)
    client = Api(api_server)
    yield client
    client.http.close()
