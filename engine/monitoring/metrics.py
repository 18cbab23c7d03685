"""Prometheus metrics, computed from the database and Redis when Prometheus scrapes.

Nothing is counted in process memory: every figure is read at scrape time, so any number of
status servers give the same answer, and a restart loses nothing. The names are documented in
``docs/operations.md`` (``METRICS`` below is that list, and a test holds the two together).

Dramatiq's own metrics come from its ``Prometheus`` middleware, which the worker adds when it
runs under the ``dramatiq`` command (see ``engine.core.broker``). It writes them to the folder
``dramatiq_prom_db`` names; ``registry()`` adds what it finds there, so one scrape of
``/metrics`` on the same host has both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from datetime import datetime

import dramatiq
import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.core.db import connection
from engine.core.heartbeat import redis_client
from engine.monitoring import figures as ops
from engine.monitoring import heartbeats

logger = logging.getLogger("invites.metrics")

#: The Content-Type of ``render``'s output.
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Buckets of the delivery latency histogram, in seconds: a send is normally seconds; minutes
#: mean a queue or retries; hours mean the workers or the scheduler were down.
LATENCY_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

#: Every metric of ours, with its help text (docs/operations.md lists the same names).
METRICS: dict[str, str] = {
    "invites_up": "1 if the component answered this scrape (database, broker), else 0.",
    "invites_invitations": "Invitations by state.",
    "invites_emails_sent_total": "Emails accepted by the mail server, by kind (from the outbox table).",
    "invites_emails_failed_total": "Emails that failed for good, by kind (from the outbox table).",
    "invites_emails_failed_last_hour": "Emails whose last attempt in the last hour failed, by kind and outcome.",
    "invites_delivery_latency_seconds": "From owed (invitation created, reminder due) to SMTP accept, emails sent "
    "in the last hour, by kind.",
    "invites_due_backlog": "Follow-ups whose time has passed, not yet claimed by a sweep.",
    "invites_due_backlog_oldest_age_seconds": "How long the oldest unclaimed due follow-up has waited.",
    "invites_queue_messages": "Messages in each Dramatiq queue, by state (ready, delayed, in_flight, orphaned).",
    "invites_dead_letters": "Dead-lettered messages per queue.",
    "invites_workers_alive": "Worker processes with a live heartbeat.",
    "invites_worker_threads": "Worker threads of the live worker processes.",
    "invites_schedulers_alive": "Scheduler processes with a live heartbeat.",
    "invites_sweep_last_duration_seconds": "Duration of each live scheduler's last sweep.",
    "invites_sweep_last_claimed": "Invitations each live scheduler's last sweep claimed.",
    "invites_sweep_last_batches": "Claim batches of each live scheduler's last sweep.",
    "invites_sweeps_total": "Sweeps run (every scheduler, since Redis last lost its data).",
    "invites_sweep_claimed_total": "Invitations claimed by sweeps.",
    "invites_sweep_duration_seconds_total": "Time spent sweeping.",
}


class OpsCollector(Collector):
    """Our figures as Prometheus metric families, read afresh on each scrape."""

    def __init__(
        self,
        *,
        broker: Callable[[], dramatiq.Broker],
        now: Callable[[], datetime],
    ) -> None:
        self._broker = broker
        self._now = now

    def describe(self) -> list[Metric]:
        return []  # names are fixed, and describing must not query anything at registration

    def collect(self) -> Iterator[Metric]:
        now = self._now()
        up = GaugeMetricFamily("invites_up", METRICS["invites_up"], labels=["component"])
        try:
            with connection():
                families = list(self._database(now))
            up.add_metric(["database"], 1)
        except Exception as exc:  # noqa: BLE001 - a scrape reports a database outage, it does not fail
            logger.warning("metrics: database did not answer", extra={"action": "metrics_failed", "error": str(exc)})
            families = []
            up.add_metric(["database"], 0)
        try:
            families += list(self._broker_families(self._broker()))
            up.add_metric(["broker"], 1)
        except Exception as exc:  # noqa: BLE001 - Redis or RabbitMQ down: say so, keep the rest
            logger.warning("metrics: broker did not answer", extra={"action": "metrics_failed", "error": str(exc)})
            up.add_metric(["broker"], 0)
        yield up
        yield from families

    def _database(self, now: datetime) -> Iterator[Metric]:
        states = GaugeMetricFamily("invites_invitations", METRICS["invites_invitations"], labels=["state"])
        for state, n in ops.invitations_by_state().items():
            states.add_metric([state], n)
        yield states

        totals = ops.email_totals()
        kinds = sorted(set(ops.EMAIL_KINDS) | {kind for kind, _ in totals})
        for status, name in (("sent", "invites_emails_sent"), ("failed", "invites_emails_failed")):
            family = CounterMetricFamily(name, METRICS[name + "_total"], labels=["kind"])
            for kind in kinds:
                family.add_metric([kind], totals.get((kind, status), 0))
            yield family

        recent = ops.recent_failures(now)
        failed = GaugeMetricFamily(
            "invites_emails_failed_last_hour", METRICS["invites_emails_failed_last_hour"], labels=["kind", "outcome"]
        )
        for kind in kinds:
            failed.add_metric([kind, "failed"], recent.failed.get(kind, 0))
            failed.add_metric([kind, "retrying"], recent.retrying.get(kind, 0))
        yield failed

        latency = HistogramMetricFamily(
            "invites_delivery_latency_seconds", METRICS["invites_delivery_latency_seconds"], labels=["kind"]
        )
        samples = ops.delivery_latencies(now)
        for kind in kinds:
            values = samples.get(kind, [])
            buckets = [(_bound(b), sum(1 for v in values if v <= b)) for b in LATENCY_BUCKETS_S]
            buckets.append(("+Inf", len(values)))
            latency.add_metric([kind], buckets, sum_value=sum(values))
        yield latency

        backlog = ops.due_backlog(now)
        yield GaugeMetricFamily("invites_due_backlog", METRICS["invites_due_backlog"], value=backlog.due)
        yield GaugeMetricFamily(
            "invites_due_backlog_oldest_age_seconds",
            METRICS["invites_due_backlog_oldest_age_seconds"],
            value=backlog.oldest_age_s or 0.0,
        )

    def _broker_families(self, broker: dramatiq.Broker) -> Iterator[Metric]:
        queues = GaugeMetricFamily(
            "invites_queue_messages", METRICS["invites_queue_messages"], labels=["queue", "state"]
        )
        dead = GaugeMetricFamily("invites_dead_letters", METRICS["invites_dead_letters"], labels=["queue"])
        for q in ops.queue_counts(broker):
            for state in ("ready", "delayed", "in_flight", "orphaned"):
                value = getattr(q, state)
                if value is not None:
                    queues.add_metric([q.queue, state], value)
            dead.add_metric([q.queue], q.dead)
        yield queues
        yield dead
        client = redis_client(broker)
        if client is not None:
            yield from self._heartbeats(client)

    def _heartbeats(self, client: redis.Redis) -> Iterator[Metric]:
        workers = heartbeats.workers(client)
        schedulers = heartbeats.schedulers(client)
        yield GaugeMetricFamily("invites_workers_alive", METRICS["invites_workers_alive"], value=len(workers))
        yield GaugeMetricFamily(
            "invites_worker_threads", METRICS["invites_worker_threads"], value=sum(w.get("threads", 0) for w in workers)
        )
        yield GaugeMetricFamily("invites_schedulers_alive", METRICS["invites_schedulers_alive"], value=len(schedulers))
        names = ("invites_sweep_last_duration_seconds", "invites_sweep_last_claimed", "invites_sweep_last_batches")
        last = {name: GaugeMetricFamily(name, METRICS[name], labels=["host", "pid"]) for name in names}
        for s in schedulers:
            labels, sweep = [str(s.get("host")), str(s.get("pid"))], s.get("last_sweep") or {}
            last["invites_sweep_last_duration_seconds"].add_metric(labels, float(sweep.get("duration_ms", 0)) / 1000)
            last["invites_sweep_last_claimed"].add_metric(labels, sweep.get("claimed", 0))
            last["invites_sweep_last_batches"].add_metric(labels, sweep.get("batches", 0))
        yield from last.values()
        totals = heartbeats.sweep_totals(client)
        yield CounterMetricFamily("invites_sweeps", METRICS["invites_sweeps_total"], value=totals.get("sweeps", 0))
        yield CounterMetricFamily(
            "invites_sweep_claimed", METRICS["invites_sweep_claimed_total"], value=totals.get("claimed", 0)
        )
        yield CounterMetricFamily(
            "invites_sweep_duration_seconds",
            METRICS["invites_sweep_duration_seconds_total"],
            value=totals.get("duration_ms", 0) / 1000,
        )


def _bound(seconds: float) -> str:
    return str(float(seconds))


def dramatiq_metrics_dir(path: str | None = None) -> str | None:
    """The folder Dramatiq's Prometheus middleware writes to (``dramatiq_prom_db``), if it has metrics."""
    if path is None:
        from dramatiq.middleware.prometheus import DB_PATH as path
    try:
        return path if any(name.endswith(".db") for name in os.listdir(path)) else None
    except FileNotFoundError:
        return None


def registry(
    *,
    broker: Callable[[], dramatiq.Broker],
    now: Callable[[], datetime],
    dramatiq_dir: str | None = None,
) -> CollectorRegistry:
    """A registry with our collector, and the Dramatiq workers' metrics this host has.

    ``dramatiq_dir`` is the workers' ``dramatiq_prom_db`` (default: this process's value of it).
    """
    reg = CollectorRegistry(auto_describe=False)
    reg.register(OpsCollector(broker=broker, now=now))
    reg.register(_DramatiqFiles(dramatiq_dir))
    return reg


class _DramatiqFiles(Collector):
    """Dramatiq's multiprocess metric files, read at each scrape (workers come and go)."""

    def __init__(self, path: str | None) -> None:
        self._path = path

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        path = dramatiq_metrics_dir(self._path)
        if path is None:
            return
        from prometheus_client.multiprocess import MultiProcessCollector

        yield from MultiProcessCollector(None, path=path).collect()


def render(reg: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``reg``."""
    return generate_latest(reg)
