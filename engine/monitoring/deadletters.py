"""Dead letters: messages Dramatiq gave up on, listed, requeued or purged (Redis broker).

Dramatiq keeps them per queue in ``<ns>:<q>.XQ`` (a sorted set of ids by the time they died)
and ``<ns>:<q>.XQ.msgs`` (id → message), for ``DEAD_MESSAGE_TTL_MS``; it has no replay tool.
A requeued message is a fresh copy of the original on its queue, retry count reset. It runs
the same step, which re-reads the invitation's row, so it cannot send an email twice: a step
already done, or an invitation that has since failed, signed in or expired, does nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, cast

import dramatiq
import redis
from dramatiq.common import q_name

from engine.core.broker import QUEUES
from engine.core.errors import InvalidInput, NotFound
from engine.core.heartbeat import redis_client

logger = logging.getLogger("invites.deadletters")

#: Options a dead message carries from its last run that a requeued copy must not inherit.
_RUN_OPTIONS = ("retries", "traceback", "requeue_timestamp", "redis_message_id", "eta")


@dataclass(frozen=True)
class DeadLetter:
    """One dead message: ``id`` is what ``requeue`` takes."""

    id: str
    queue: str
    actor: str
    args: list[Any]
    kwargs: dict[str, Any]
    message_id: str
    retries: int
    #: The last line of the last run's traceback (Dramatiq keeps it for retried messages only).
    error: str | None
    died_at: datetime
    age_s: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "died_at": self.died_at.isoformat()}


def _redis(broker: dramatiq.Broker) -> redis.Redis:
    client = redis_client(broker)
    if client is None:
        raise InvalidInput(
            "dead letters are managed here with the Redis broker only; with RabbitMQ use its "
            "management UI (queues <name>.XQ)",
            field="BROKER_URL",
        )
    return client


def _keys(broker: dramatiq.Broker, queue: str) -> tuple[str, str]:
    namespace = getattr(broker, "namespace", "dramatiq")
    return f"{namespace}:{queue}.XQ", f"{namespace}:{queue}.XQ.msgs"


def _error(options: dict[str, Any]) -> str | None:
    lines = [line for line in str(options.get("traceback") or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else None


def _decode(dead_id: str, queue: str, raw: bytes, died_ms: float, now: datetime) -> DeadLetter:
    message = dramatiq.Message.decode(raw)
    died_at = datetime.fromtimestamp(died_ms / 1000, now.tzinfo)
    return DeadLetter(
        id=dead_id,
        queue=queue,
        actor=message.actor_name,
        args=list(message.args),
        kwargs=dict(message.kwargs),
        message_id=message.message_id,
        retries=int(message.options.get("retries", 0)),
        error=_error(message.options),
        died_at=died_at,
        age_s=max(0.0, (now - died_at).total_seconds()),
    )


def list_dead(broker: dramatiq.Broker, *, now: datetime, limit: int = 1000) -> list[DeadLetter]:
    """Dead letters of every queue, oldest first, at most ``limit`` per queue.

    Pass the wall-clock time as ``now`` (``SystemClock().now()``), not the engine's clock:
    Dramatiq stamps a death with the real time, so only that gives a true age.
    """
    client = _redis(broker)
    found: list[DeadLetter] = []
    for queue in QUEUES:
        zset, msgs = _keys(broker, queue)
        entries = cast(list[tuple[bytes, float]], client.zrange(zset, 0, limit - 1, withscores=True))
        if not entries:
            continue
        ids = [_text(member) for member, _ in entries]
        raws = cast(list[bytes | None], client.hmget(msgs, ids))
        for dead_id, (_, score), raw in zip(ids, entries, raws, strict=True):
            if raw is not None:  # a maintenance pass may have expired it meanwhile
                found.append(_decode(dead_id, queue, raw, score, now))
    found.sort(key=lambda d: d.died_at)
    return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _find(broker: dramatiq.Broker, client: redis.Redis, wanted: str) -> tuple[str, str, bytes, float]:
    """Queue, id, message and death time of dead letter ``wanted`` (its id or its message id)."""
    for queue in QUEUES:
        zset, msgs = _keys(broker, queue)
        raw = cast(bytes | None, client.hget(msgs, wanted))
        if raw is not None:
            return queue, wanted, raw, float(cast(float | None, client.zscore(zset, wanted)) or 0)
        for key, value in client.hscan_iter(msgs):
            if dramatiq.Message.decode(value).message_id == wanted:
                dead_id = _text(key)
                return queue, dead_id, value, float(cast(float | None, client.zscore(zset, dead_id)) or 0)
    raise NotFound("no dead letter with that id", dead_letter=wanted)


def requeue(broker: dramatiq.Broker, dead_id: str, *, now: datetime) -> DeadLetter | None:
    """Put dead letter ``dead_id`` back on its queue; returns it, or None if another caller did.

    The letter is taken out of the dead-letter set first (only one caller can), then enqueued;
    if the enqueue fails it is put back, so a broker error loses nothing.
    """
    client = _redis(broker)
    queue, dead_id, raw, died_ms = _find(broker, client, dead_id)
    zset, msgs = _keys(broker, queue)
    if not client.zrem(zset, dead_id):
        return None
    client.hdel(msgs, dead_id)
    message = dramatiq.Message.decode(raw)
    options = {k: v for k, v in message.options.items() if k not in _RUN_OPTIONS}
    options["requeued"] = int(options.get("requeued", 0)) + 1
    fresh = dataclasses.replace(message, queue_name=q_name(message.queue_name), options=options)
    try:
        broker.enqueue(fresh)
    except Exception:
        pipe = client.pipeline(transaction=True)
        pipe.zadd(zset, {dead_id: died_ms})
        pipe.hset(msgs, dead_id, raw)
        pipe.execute()
        raise
    letter = _decode(dead_id, queue, raw, died_ms, now)
    logger.info(
        "dead letter requeued",
        extra={"action": "dead_letter_requeued", "dead_letter": dead_id, "step": letter.actor,
               "message_id": letter.message_id, "args": letter.args},
    )
    return letter


def requeue_all(broker: dramatiq.Broker, *, now: datetime) -> int:
    """Requeue every dead letter; returns how many went back on their queues."""
    client = _redis(broker)
    count = 0
    for queue in QUEUES:
        zset, _ = _keys(broker, queue)
        for member in cast(list[bytes], client.zrange(zset, 0, -1)):
            try:
                if requeue(broker, _text(member), now=now) is not None:
                    count += 1
            except NotFound:  # requeued or expired by someone else meanwhile
                continue
    return count


def purge(broker: dramatiq.Broker) -> int:
    """Delete every dead letter of our queues; returns how many there were."""
    client = _redis(broker)
    count = 0
    for queue in QUEUES:
        zset, msgs = _keys(broker, queue)
        pipe = client.pipeline(transaction=True)
        pipe.zcard(zset)
        pipe.delete(zset, msgs)
        count += int(pipe.execute()[0])
    logger.info("dead letters purged", extra={"action": "dead_letters_purged", "count": count})
    return count
