"""The Dramatiq broker, built from ``BROKER_URL``. Set it before any actor module is imported."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware

from engine.db import db
from engine.settings import Settings

#: Queue of the invitation workflow steps.
QUEUE = "invitations"
#: Queue of one-off emails (password resets).
MAIL_QUEUE = "mail"
QUEUES = (QUEUE, MAIL_QUEUE)


class DatabaseConnections(Middleware):
    """Open a Peewee connection around each message and give it back after.

    Peewee's connections are per thread; without this each worker thread would hold one open
    for ever, and a server-side disconnect would surface as an error on the next message.
    """

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        db.connect(reuse_if_open=True)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        if not db.is_closed():
            db.close()

    after_skip_message = after_process_message


def build_broker(settings: Settings) -> dramatiq.Broker:
    """A broker for ``settings.broker_url`` (``redis://`` or ``amqp://``) with our middleware."""
    url = settings.broker_url
    broker: dramatiq.Broker
    if url.startswith(("redis://", "rediss://", "unix://")):
        # Faster recovery of a killed worker's messages than Dramatiq's 0.1 % default; the sweep's
        # lease bounds it anyway (docs/guarantees.md).
        broker = RedisBroker(url=url, maintenance_chance=settings.redis_maintenance_chance)
    elif url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=url, confirm_delivery=True)
    else:
        raise ValueError(f"unsupported BROKER_URL scheme: {url.split(':', 1)[0]!r}")
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(DatabaseConnections())
    for queue in QUEUES:
        broker.declare_queue(queue)
    return broker


def setup_broker(settings: Settings) -> dramatiq.Broker:
    """Build the broker and make it Dramatiq's global one."""
    broker = build_broker(settings)
    dramatiq.set_broker(broker)
    return broker
