"""The Dramatiq peer: a no-op actor on the benchmarks' Redis, run with ``dramatiq bench.noop_dramatiq``."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

QUEUE = "noop"

broker = RedisBroker(url=os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/13"))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(n: int) -> None:
    """Does nothing: what remains is Dramatiq's own cost per message."""
