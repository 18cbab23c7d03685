"""Dramatiq actors: JSON ids in, the step re-checks the row, safe to run twice.

The broker must be set (``engine.core.broker.setup_broker``) before this module is imported.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import dramatiq
import peewee

from engine.core import clock
from engine.core.broker import MAIL_QUEUE, QUEUE
from engine.core.errors import Conflict, InvalidInput, TransientDeliveryError
from engine.core.runtime import ensure_broker
from engine.core.settings import get_settings
from engine.mail import Transport, open_transport
from workflows import steps

ensure_broker()  # before the decorators below bind the actors to Dramatiq's global broker

logger = logging.getLogger("invites.actors")

#: Errors worth another try; anything else fails the message at once (and the invitation).
RETRYABLE: tuple[type[BaseException], ...] = (
    TransientDeliveryError,
    Conflict,
    peewee.OperationalError,
    peewee.InterfaceError,
)

#: Invitations per nudge message: one message, one worker thread, one SMTP connection, and
#: two write transactions for the lot (bench/RESULTS.md: 100 a message costs a third less CPU
#: per email than 20).
NUDGE_BATCH = 100
#: The most ids one batch message may carry.
MAX_BATCH = 1000

_transport: Transport | None = None
_transport_lock = threading.Lock()


def transport() -> Transport:
    """The process's mail transport (it keeps one SMTP connection per worker thread)."""
    global _transport
    with _transport_lock:
        if _transport is None:
            _transport = open_transport(get_settings())
        return _transport


def reset_transport() -> None:
    """Close and forget the transport (settings changed, or shutting down)."""
    global _transport
    with _transport_lock:
        if _transport is not None:
            _transport.close()
        _transport = None


def _retry_when(retries: int, exc: BaseException) -> bool:
    return isinstance(exc, RETRYABLE) and retries + 1 < get_settings().max_delivery_attempts


def _invitation_id(value: Any) -> int:
    # Bounded like validate.positive_id: a bigger int from a hand-made message overflows SQLite.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 2**62:
        raise InvalidInput(f"invitation id must be a positive integer, got {value!r}"[:200])
    return value


_settings = get_settings()


@dramatiq.actor(
    queue_name=QUEUE,
    retry_when=_retry_when,
    min_backoff=_settings.retry_min_backoff_ms,
    max_backoff=_settings.retry_max_backoff_ms,
    time_limit=_settings.step_time_limit_ms,
    on_retry_exhausted="invitation_failed",
)
def advance_invitation(invitation_id: int) -> None:
    """Look at invitation ``invitation_id`` now and do the step that is due, if any."""
    outcome = steps.advance(
        _invitation_id(invitation_id),
        now=clock.now(),
        transport=transport(),
        settings=get_settings(),
    )
    logger.debug("step done", extra={"action": "step", "invitation_id": invitation_id, "outcome": outcome})


def _retry_handler_when(retries: int, exc: BaseException) -> bool:
    # Anyone can enqueue the handler by name: only a database hiccup is worth another try, a
    # malformed call (wrong arguments, wrong types) is dead-lettered at once.
    return isinstance(exc, RETRYABLE) and retries < 5


@dramatiq.actor(queue_name=QUEUE, retry_when=_retry_handler_when, min_backoff=1_000, max_backoff=60_000)
def invitation_failed(message_data: dict[str, Any], retry_info: dict[str, Any]) -> None:
    """Retries ran out: mark the invitation failed with its last error, for staff to see."""
    if not isinstance(message_data, dict):
        raise InvalidInput("invitation_failed takes the failed message's data")
    args = message_data.get("args")
    first = args[0] if isinstance(args, list) and args else None
    try:
        invitation_id = _invitation_id(first)
    except InvalidInput:
        # The malformed message itself is in the dead letters already; "args" is a LogRecord field.
        logger.error("malformed message dead-lettered",
                     extra={"action": "dead_letter", "message_args": repr(args)[:200]})
        return
    options = message_data.get("options")
    traceback = str(options.get("traceback") or "") if isinstance(options, dict) else ""
    lines = traceback.strip().splitlines()
    error = steps.last_error(invitation_id) or (lines[-1] if lines else "retries exhausted")
    steps.fail(invitation_id, error=error, now=clock.now())


@dramatiq.actor(queue_name=MAIL_QUEUE, retry_when=_retry_when,
                min_backoff=_settings.retry_min_backoff_ms,
                max_backoff=_settings.retry_max_backoff_ms,
                time_limit=_settings.step_time_limit_ms)
def send_outbox_email(outbox_id: int) -> None:
    """Deliver a one-off outbox email (a password reset) if it is still owed."""
    from workflows import reset_emails as resets

    resets.deliver(_invitation_id(outbox_id), now=clock.now(), transport=transport(), settings=get_settings())


def _invitation_ids(value: Any) -> list[int]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_BATCH:
        raise InvalidInput(f"invitation ids must be a list of 1 to {MAX_BATCH} ids")
    return [_invitation_id(v) for v in value]


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=_settings.step_time_limit_ms * 10)
def advance_invitations(invitation_ids: list[int]) -> None:
    """The fast path: several invitations in one message, planned and recorded together
    (``steps.advance_many``), their emails sent on one SMTP connection.

    A step that fails goes on alone through ``advance_invitation``, which owns the retry
    policy; the others are not held back by it. If the batch itself fails (a transaction),
    every invitation of it goes that way.
    """
    ids = _invitation_ids(invitation_ids)
    try:
        outcomes = steps.advance_many(ids, now=clock.now(), transport=transport(), settings=get_settings())
    except Exception as exc:  # noqa: BLE001 - handed to the per-invitation path below
        failed: dict[int, BaseException] = dict.fromkeys(ids, exc)
    else:
        failed = dict(outcomes.errors)
        if outcomes.deferred:
            enqueue_steps(outcomes.deferred)
    for invitation_id, error in failed.items():
        delay = get_settings().retry_min_backoff_ms if isinstance(error, RETRYABLE) else 0
        logger.info(
            "step handed to the single path",
            extra={"action": "step_split", "invitation_id": invitation_id, "error": type(error).__name__},
        )
        advance_invitation.send_with_options(args=(invitation_id,), delay=delay)


ACTORS: tuple[dramatiq.Actor[Any, Any], ...] = (
    advance_invitation,
    advance_invitations,
    invitation_failed,
    send_outbox_email,
)


def bind(broker: dramatiq.Broker) -> None:
    """Declare our actors on ``broker`` (tests that run one suite on two brokers)."""
    for actor in ACTORS:
        actor.broker = broker
        broker.declare_actor(actor)


def enqueue_steps(invitation_ids: list[int]) -> int:
    """Nudge these invitations, ``NUDGE_BATCH`` ids a message; returns how many reached the broker.

    Stops at the first broker error: the rest keep their lease and the sweep retries them.
    """
    sent = 0
    for start in range(0, len(invitation_ids), NUDGE_BATCH):
        chunk = invitation_ids[start : start + NUDGE_BATCH]
        try:
            if len(chunk) == 1:
                advance_invitation.send(chunk[0])
            else:
                advance_invitations.send(chunk)
        except Exception as exc:  # noqa: BLE001 - any broker failure: the sweep will retry
            logger.warning(
                "could not enqueue; the sweep will retry after the lease",
                extra={"action": "enqueue_failed", "count": len(invitation_ids) - sent, "error": type(exc).__name__},
            )
            break
        sent += len(chunk)
    return sent
