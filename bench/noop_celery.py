"""The Celery peer: a no-op task on the same Redis, run with ``celery -A bench.noop_celery worker``."""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "noop_celery"

app = Celery("bench", broker=os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/13"))
app.conf.update(task_default_queue=QUEUE, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task(ignore_result=True)
def noop(n: int) -> None:
    """Does nothing: what remains is Celery's own cost per task."""
