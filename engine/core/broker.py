"""The Dramatiq broker, built from ``BROKER_URL``. Set it before any actor module is imported."""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware, MiddlewareError, Retries, TimeLimit

from engine.core.db import db
from engine.core.heartbeat import WorkerHeartbeat, dramatiq_prometheus
from engine.core.logs import MessageLogContext
from engine.core.settings import Settings

#: Queue of the invitation workflow steps.
QUEUE = "invitations"
#: Queue of one-off emails (password resets).
MAIL_QUEUE = "mail"
QUEUES = (QUEUE, MAIL_QUEUE)


class WorkerMisconfigured(MiddlewareError, ValueError):
    """The worker's settings cannot work; it stops at start (Dramatiq logs and ignores the rest)."""


class DatabaseConnections(Middleware):
    """Open a Peewee connection around each message and give it back after.

    Peewee's connections are per thread; without this each worker thread would hold one open
    for ever, and a server-side disconnect would surface as an error on the next message.
    """

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        db.connect(reuse_if_open=True)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        if not db.is_closed():
            db.close()

    after_skip_message = after_process_message

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Refuse to start a worker with more threads than pooled connections.

        Every thread holds a connection while it runs a message: a smaller pool makes threads
        wait for one (and time out under load) instead of working.
        """
        pool_size = getattr(db.obj, "_max_connections", None)  # only pooled databases have one
        if pool_size and pool_size < worker.worker_threads:
            raise WorkerMisconfigured(
                f"the database pool has {pool_size} connections for {worker.worker_threads} worker threads: "
                f"add ?max_connections={worker.worker_threads} (or more) to DATABASE_URL"
            )


class ConsumerTimeoutGuard(Middleware):
    """RabbitMQ only: refuse to start a worker whose messages may stay unacked too long.

    RabbitMQ closes a channel whose delivery stays unacked past its ``consumer_timeout``, and
    every message on it comes back: a step running longer, or a retry delayed longer (Dramatiq
    holds delayed messages unacked until their time), would run again and again.
    """

    def __init__(self, consumer_timeout_ms: int) -> None:
        self.consumer_timeout_ms = consumer_timeout_ms

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        limits = next(m for m in broker.middleware if isinstance(m, TimeLimit))
        retries = next(m for m in broker.middleware if isinstance(m, Retries))
        too_long = []
        for name in sorted(broker.get_declared_actors()):
            options = broker.get_actor(name).options
            hold_ms = options.get("time_limit", limits.time_limit)
            if options.get("retry_when") is not None or options.get("max_retries", retries.max_retries) > 0:
                hold_ms = max(hold_ms, options.get("max_backoff", retries.max_backoff))
            if hold_ms >= self.consumer_timeout_ms:
                too_long.append(f"{name} ({hold_ms} ms)")
        if too_long:
            raise WorkerMisconfigured(
                f"time limits or retry delays not below RabbitMQ's consumer_timeout of "
                f"{self.consumer_timeout_ms} ms: {', '.join(too_long)}; lower them or raise "
                "consumer_timeout on the server and RABBITMQ_CONSUMER_TIMEOUT_MS here"
            )


class DeadLetterReason(Middleware):
    """Redis: a message that dies keeps why, for whoever reads the dead letters.

    Dramatiq moves the body it stored at enqueue time to ``<q>.XQ``: what the failed run learnt
    (the error of an actor that raised, an unknown actor) is lost, unless the message was
    retried first. Just before the move, store the body again with the error in
    ``options["traceback"]`` (only if the body is still there, so nothing stray is left behind).
    """

    _SET_IF_PRESENT = (
        "if redis.call('hexists', KEYS[1], ARGV[1]) == 1 then "
        "return redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) end return 0"
    )

    def before_nack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        redis_id = message.options.get("redis_message_id")
        if not isinstance(broker, RedisBroker) or not redis_id:
            return
        if not message.options.get("traceback"):
            error = getattr(message, "_exception", None)
            message.options["traceback"] = f"{type(error).__name__}: {error}" if error else "dead-lettered"
        key = f"{broker.namespace}:{message.queue_name}.msgs"
        broker.client.eval(self._SET_IF_PRESENT, 1, key, redis_id, message.encode())


def build_broker(settings: Settings) -> dramatiq.Broker:
    """A broker for ``settings.broker_url`` (``redis://`` or ``amqp://``) with our middleware."""
    url = settings.broker_url
    broker: dramatiq.Broker
    if url.startswith(("redis://", "rediss://", "unix://")):
        # Faster recovery of a killed worker's messages than Dramatiq's 0.1 % default; the sweep's
        # lease bounds it anyway (docs/guarantees.md).
        broker = RedisBroker(
            url=url,
            maintenance_chance=settings.redis_maintenance_chance,
            dead_message_ttl=settings.dead_message_ttl_ms,
        )
        broker.add_middleware(DeadLetterReason())
    elif url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers import rabbitmq

        # Dramatiq reads the dead-letter TTL from its own env var at import; ours wins. RabbitMQ
        # refuses to re-declare a queue with another TTL, so every process must agree on it.
        rabbitmq.DEAD_MESSAGE_TTL = settings.dead_message_ttl_ms
        # Publisher confirms: send() returns once RabbitMQ has the message, so "enqueue after
        # commit" cannot lose it silently, and a deleted queue is declared again.
        broker = rabbitmq.RabbitmqBroker(url=url, confirm_delivery=True)
        broker.add_middleware(ConsumerTimeoutGuard(settings.rabbitmq_consumer_timeout_ms))
    else:
        raise ValueError(f"unsupported BROKER_URL scheme: {url.split(':', 1)[0]!r}")
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(DatabaseConnections())
    # First in, last out: Dramatiq's own log lines about a message carry its invitation and step.
    broker.add_middleware(MessageLogContext(), before=type(broker.middleware[0]))
    broker.add_middleware(WorkerHeartbeat())
    if (prometheus := dramatiq_prometheus(settings.worker_prometheus)) is not None:
        broker.add_middleware(prometheus)
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker


def ping(url: str, *, timeout_s: float) -> None:
    """Connect to the broker at ``url`` once, giving up after about ``timeout_s``; raises what the client raised.

    A client of its own with short timeouts: Dramatiq's connections have none, so an unreachable
    host would hold a process at start for minutes (the kernel's TCP timeout).
    """
    if url.startswith(("amqp://", "amqps://")):
        import pika

        params = pika.URLParameters(url)
        params.connection_attempts, params.socket_timeout, params.stack_timeout = 1, timeout_s, timeout_s
        pika.BlockingConnection(params).close()
        return
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    finally:
        client.close()


def setup_broker(settings: Settings) -> dramatiq.Broker:
    """Build the broker and make it Dramatiq's global one."""
    broker = build_broker(settings)
    dramatiq.set_broker(broker)
    return broker
