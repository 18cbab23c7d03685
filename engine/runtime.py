"""Booting a process: settings, logging, database, broker, actors, in that order."""

from __future__ import annotations

import dramatiq

from engine.broker import setup_broker
from engine.clock import FileOffsetClock, use_clock
from engine.db import init_db
from engine.settings import Settings, configure, get_settings

_broker: dramatiq.Broker | None = None


def boot(settings: Settings | None = None, *, with_broker: bool = True) -> Settings:
    """Make this process ready to use the engine; the broker is set before actors load."""
    settings = configure(settings) if settings is not None else get_settings()
    if settings.clock_offset_file:
        use_clock(FileOffsetClock(settings.clock_offset_file))
    init_db(settings.database_url)
    if with_broker:
        ensure_broker()
        import workflows.actors  # noqa: F401 - declares the actors on our broker
    return settings


def ensure_broker() -> dramatiq.Broker:
    """Our broker, built from the settings on first need.

    Actors bind to Dramatiq's global broker when their module is imported; without this, an
    early import would bind them to Dramatiq's own default (RabbitMQ when pika is installed).
    """
    global _broker
    if _broker is None:
        _broker = setup_broker(get_settings())
    return _broker


def broker() -> dramatiq.Broker:
    if _broker is None:
        raise RuntimeError("engine.runtime.boot() has not set a broker")
    return _broker
