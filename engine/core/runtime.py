"""Booting a process: settings, clock, database and broker, in that order.

The broker is set before any actor module loads (``workflows.actors`` binds its actors to it);
the core never imports the actors: a worker's entry point does, and so does every operation
that sends a step.

Long-running processes (worker, scheduler) start through ``start_process``: a short check that
the database and the broker answer comes first, so a wrong URL or a service not up yet is one
line and an exit code for the supervisor, not a process that logs connection errors for ever.
Once running, they ride out outages (Dramatiq reconnects, the sweep retries).
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse, urlunparse

import dramatiq
import peewee

from engine.core import broker as brokers
from engine.core.clock import FileOffsetClock, use_clock
from engine.core.db import db, init_db, open_database
from engine.core.errors import SchemaNotUpgraded, ServiceUnavailable
from engine.core.settings import Settings, configure, get_settings

logger = logging.getLogger("invites.runtime")

#: Exit codes of every process, as the README's CLI section documents them (``engine.cli.main`` too).
EXIT_REFUSED, EXIT_UNAVAILABLE = 1, 3
#: How long the start-up check waits for each service before the process exits 3.
START_CHECK_TIMEOUT_S = 5.0

_broker: dramatiq.Broker | None = None


def boot(settings: Settings | None = None, *, with_broker: bool = True) -> Settings:
    """Make this process ready to use the engine: settings, clock, database, and the broker."""
    settings = configure(settings) if settings is not None else get_settings()
    if settings.clock_offset_file:
        use_clock(FileOffsetClock(settings.clock_offset_file))
    init_db(settings.database_url)
    if with_broker:
        ensure_broker()
    return settings


def ensure_broker() -> dramatiq.Broker:
    """Our broker, built from the settings on first need.

    Actors bind to Dramatiq's global broker when their module is imported; without this, an
    early import would bind them to Dramatiq's own default (RabbitMQ when pika is installed).
    """
    global _broker
    if _broker is None:
        _broker = brokers.setup_broker(get_settings())
    return _broker


def broker() -> dramatiq.Broker:
    if _broker is None:
        raise RuntimeError("engine.core.runtime.boot() has not set a broker")
    return _broker


# --- the start-up check ----------------------------------------------------------------------

def start_process(name: str) -> Settings:
    """Set up logging, check the services, then boot: what ``worker.py`` and ``scheduler.py`` do.

    Exits (``SystemExit``) with one CRITICAL line: 3 when the database or the broker does not
    answer within ``START_CHECK_TIMEOUT_S``, 1 when the database's schema is not upgraded.
    """
    from engine.core.logs import setup_logging

    settings = get_settings()
    setup_logging(settings.log_format)
    try:
        check_services(settings)
    except (ServiceUnavailable, SchemaNotUpgraded) as exc:
        unavailable = isinstance(exc, ServiceUnavailable)
        logger.critical(
            f"{name} not started: " + (f"a service did not answer: {exc.message}" if unavailable else exc.message),
            extra={"action": "start_refused", "component": name, "code": exc.code},
        )
        raise SystemExit(EXIT_UNAVAILABLE if unavailable else EXIT_REFUSED) from None
    return boot()


def check_services(settings: Settings, *, timeout_s: float = START_CHECK_TIMEOUT_S) -> None:
    """The database answers and has this release's schema; the broker answers. Each within ``timeout_s``.

    Raises ``ServiceUnavailable`` or ``SchemaNotUpgraded``.
    """
    url = settings.database_url
    try:
        database = open_database(url)
        if isinstance(database, peewee.PostgresqlDatabase):  # psycopg2 waits for TCP's own timeout otherwise
            database.connect_params.setdefault("connect_timeout", max(2, round(timeout_s)))
        try:
            version = schema_version(database)
        finally:
            close = getattr(database, "close_all", database.close)  # a pool keeps closed connections
            close()
    except (peewee.PeeweeException, OSError) as exc:
        raise ServiceUnavailable(f"the database at {redact(url)} ({one_line(exc)})") from exc
    require_schema(version)
    try:
        brokers.ping(settings.broker_url, timeout_s=timeout_s)
    except Exception as exc:  # noqa: BLE001 - Redis or pika, refused or timed out: it did not answer
        raise ServiceUnavailable(f"the broker at {redact(settings.broker_url)} ({one_line(exc)})") from exc


def schema_version(database: peewee.Database | peewee.DatabaseProxy = db) -> int:
    """The last migration applied to ``database`` (0: no schema at all)."""
    from engine.core.models import SchemaVersion

    table = SchemaVersion._meta.table_name
    if not database.table_exists(table):
        return 0
    row = database.execute_sql(f'SELECT MAX(version) FROM "{table}"').fetchone()
    return int(row[0] or 0) if row else 0


def require_schema(version: int | None = None) -> None:
    """Refuse to work on a database without the migrations this release knows (``SchemaNotUpgraded``).

    A newer schema is fine: ``invites db upgrade`` runs before the new code during a rolling deploy.
    """
    from engine.core.schema import MIGRATIONS

    version = schema_version() if version is None else version
    latest = MIGRATIONS[-1][0]
    if version == 0:
        raise SchemaNotUpgraded("the database has no schema yet: run `invites db upgrade`")
    if version < latest:
        raise SchemaNotUpgraded(
            f"the database schema is at migration {version}, this release needs {latest}: run `invites db upgrade`"
        )


def redact(url: str) -> str:
    """``url`` without its user, password and query: safe for a log line."""
    parsed = urlparse(url)
    if not parsed.netloc:
        return url.split("?", 1)[0]
    host = parsed.hostname or ""
    return urlunparse(parsed._replace(netloc=f"{host}:{parsed.port}" if parsed.port else host, query=""))


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (psycopg2's messages span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
