"""SMTP faults end to end: a real worker, real Redis and database, and SMTP servers that misbehave.

Temporary trouble (server down, 421/451, a server slower than the timeout) is retried with
exponential backoff and jitter, then either delivers or, once the attempts are used up, marks the
invitation failed with the reason. A permanent refusal (550) fails it at once. No SMTP call can
hold a worker thread for longer than the socket timeout.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

import engine
from engine.core.models import Invitation, OutboxEmail
from engine.core.settings import configure, get_settings
from tests.faults import ScriptedSmtp, Slow, free_port, run_smtp, silent_server, wait_for
from workflows import actors

TEMPORARY = ["421 4.7.0 too busy, closing the connection", "451 4.3.0 mailbox busy, try later"]


@pytest.fixture
def smtp(broker: Any) -> Iterator[tuple[ScriptedSmtp, int]]:
    """A scripted SMTP server that this test's worker delivers to."""
    handler = ScriptedSmtp()
    with run_smtp(handler) as port:
        use_mail(f"smtp://127.0.0.1:{port}")
        yield handler, port
    actors.reset_transport()


def use_mail(url: str, **overrides: Any) -> None:
    """Point the workers at another mail server (the transport is rebuilt on next use)."""
    configure(replace(get_settings(), mail_url=url, **overrides))
    actors.reset_transport()


def invite(practice: Any, client_factory: Any, address: str) -> Invitation:
    client = client_factory(email=address)
    return engine.invite(practice.id, client.id, by=f"staff:{practice.standard.id}")


def outbox_of(invitation: Invitation) -> OutboxEmail:
    return OutboxEmail.get(OutboxEmail.invitation == invitation.id)


def retry_delays(records: list[logging.LogRecord]) -> dict[str, list[int]]:
    """The delay Dramatiq chose for each retry, by message id, in order."""
    delays: dict[str, list[int]] = defaultdict(list)
    for record in records:
        found = re.match(r"Retrying message '([^']+)' in (\d+) milliseconds", record.getMessage())
        if found:
            delays[found[1]].append(int(found[2]))
    return delays


@pytest.mark.parametrize("reply", TEMPORARY, ids=["421", "451"])
def test_temporary_error_is_retried_with_backoff_and_jitter_then_delivers(
    practice, client_factory, worker, smtp, caplog, reply
):
    handler, _ = smtp
    settings = get_settings()
    caplog.set_level(logging.INFO, logger="dramatiq.middleware.retries")
    # Given a server that refuses each message twice before taking it
    addresses = [f"busy{n}@example.test" for n in range(6)]
    for address in addresses:
        handler.plan(address, reply, reply)
    # When six clients are invited
    invitations = [invite(practice, client_factory, a) for a in addresses]
    worker.drain()
    # Then each gets exactly one email, on the third attempt, and its invitation is sent
    for address, invitation in zip(addresses, invitations, strict=True):
        assert len(handler.accepted_to(address)) == 1
        assert len(handler.attempts_to(address)) == 3
        assert Invitation.get_by_id(invitation.id).state == "sent"
        assert outbox_of(invitation).attempts == 3
    # And the waits grew exponentially from our minimum, each with its own jitter
    delays = retry_delays(caplog.records)
    assert len(delays) == 6 and all(len(d) == 2 for d in delays.values())
    low, high = settings.retry_min_backoff_ms, settings.retry_max_backoff_ms
    firsts = [d[0] for d in delays.values()]
    assert all(low <= d <= 2 * low for d in firsts)
    assert all(2 * low <= d[1] <= min(4 * low, high) for d in delays.values())
    assert len(set(firsts)) > 1, "every retry waited exactly as long: no jitter"
    # And the server really saw those waits
    for address in addresses:
        times = [a.at for a in handler.attempts_to(address)]
        assert times[1] - times[0] >= 0.9 * low / 1000
        assert times[2] - times[1] >= 0.9 * 2 * low / 1000


def test_temporary_errors_exhausted_mark_the_invitation_failed_with_the_reason(
    practice, client_factory, worker, smtp
):
    handler, _ = smtp
    handler.default = "451 4.3.0 mailbox busy, try later"
    invitation = invite(practice, client_factory, "never@example.test")
    worker.drain()

    attempts = get_settings().max_delivery_attempts
    assert len(handler.attempts_to("never@example.test")) == attempts
    assert handler.accepted == []
    status = engine.portal_status(practice.id, invitation.client_id)
    assert status.status == "failed"
    assert "451" in status.last_error and "mailbox busy" in status.last_error
    row = outbox_of(invitation)
    assert (row.status, row.attempts) == ("failed", attempts)
    [failed] = [e for e in engine.timeline(practice.id, invitation_id=invitation.id) if e["action"] == "fail"]
    assert "451" in failed["detail"]["error"]


@pytest.mark.parametrize("where", ["DATA", "RCPT"])
def test_permanent_550_fails_the_invitation_at_once_with_the_reason(
    practice, client_factory, worker, smtp, where
):
    handler, _ = smtp
    refusal = "550 5.1.1 no such user here"
    if where == "RCPT":
        handler.rcpt["gone@example.test"] = refusal
    else:
        handler.default = refusal
    invitation = invite(practice, client_factory, "gone@example.test")
    worker.drain()

    # One attempt, no retry
    assert len(handler.attempts_to("gone@example.test")) == (1 if where == "DATA" else 0)
    row = outbox_of(invitation)
    assert (row.status, row.attempts) == ("failed", 1)
    status = engine.portal_status(practice.id, invitation.client_id)
    assert status.status == "failed"
    assert "550" in status.last_error and "no such user" in status.last_error
    # and a link of a failed invitation does not work
    assert Invitation.get_by_id(invitation.id).state == "failed"


def test_server_down_then_back_delivers_once(practice, client_factory, worker, broker):
    # Given nothing listens on the mail port, and the workers may try often enough
    port = free_port()
    use_mail(f"smtp://127.0.0.1:{port}", max_delivery_attempts=60)
    invitation = invite(practice, client_factory, "patient@example.test")
    # When two attempts have been refused
    wait_for(lambda: outbox_of_or_none(invitation, min_attempts=2), timeout_s=20, what="two refused attempts")
    assert "Connection refused" in outbox_of(invitation).last_error
    # and the server comes up on that port
    handler = ScriptedSmtp()
    with run_smtp(handler, port):
        worker.drain()
    # Then the invitation is sent, once
    assert len(handler.accepted_to("patient@example.test")) == 1
    assert Invitation.get_by_id(invitation.id).state == "sent"
    actors.reset_transport()


def outbox_of_or_none(invitation: Invitation, *, min_attempts: int) -> OutboxEmail | None:
    row = OutboxEmail.get_or_none(OutboxEmail.invitation == invitation.id)
    return row if row is not None and row.attempts >= min_attempts and row.last_error else None


def test_server_down_for_good_marks_the_invitation_failed(practice, client_factory, worker, broker):
    use_mail(f"smtp://127.0.0.1:{free_port()}")
    invitation = invite(practice, client_factory, "nobody-home@example.test")
    worker.drain()
    status = engine.portal_status(practice.id, invitation.client_id)
    assert status.status == "failed"
    assert "SMTP connection failed" in status.last_error and "refused" in status.last_error
    assert outbox_of(invitation).attempts == get_settings().max_delivery_attempts
    actors.reset_transport()


def test_silent_server_times_out_and_never_holds_a_worker_thread(practice, client_factory, worker, broker):
    settings = get_settings()
    # Every step has a time limit, and it outlasts one SMTP conversation's timeouts.
    assert actors.advance_invitation.options["time_limit"] == settings.step_time_limit_ms
    assert settings.step_time_limit_ms > 3 * settings.smtp_timeout_s * 1000
    with silent_server() as port:
        # Given a server that accepts connections and never says a word, and a 1 s timeout
        use_mail(f"smtp://127.0.0.1:{port}", smtp_timeout_s=1)
        # When more clients are invited than the worker has threads
        started = time.monotonic()
        stuck = [invite(practice, client_factory, f"silent{n}@example.test") for n in range(6)]
        worker.drain()
        elapsed = time.monotonic() - started
    # Then every attempt gave up after the timeout, and each invitation failed with the reason
    attempts = settings.max_delivery_attempts
    assert elapsed < 6 * attempts * 1.0 / 4 + 10  # 6 invitations x attempts x 1 s over 4 threads, plus slack
    for invitation in stuck:
        status = engine.portal_status(practice.id, invitation.client_id)
        assert status.status == "failed"
        assert "timed out" in status.last_error
    # And the same worker threads deliver the next invitation to a working server at once
    handler = ScriptedSmtp()
    with run_smtp(handler) as good:
        use_mail(f"smtp://127.0.0.1:{good}")
        ok = invite(practice, client_factory, "after@example.test")
        worker.drain()
    assert Invitation.get_by_id(ok.id).state == "sent"
    assert len(handler.accepted_to("after@example.test")) == 1
    actors.reset_transport()


def test_slow_accept_past_the_timeout_is_retried_with_the_same_message_id(practice, client_factory, worker, broker):
    # Given a server that stores the message but answers DATA only after the client gave up
    handler = ScriptedSmtp()
    handler.plan("slow@example.test", Slow(2.5))
    with run_smtp(handler) as port:
        use_mail(f"smtp://127.0.0.1:{port}", smtp_timeout_s=1)
        invitation = invite(practice, client_factory, "slow@example.test")
        worker.drain()
    # Then the retry delivered it again: the documented at-least-once window, one Message-ID
    copies = handler.accepted_to("slow@example.test")
    assert len(copies) == 2
    assert copies[0]["Message-ID"] == copies[1]["Message-ID"]
    assert Invitation.get_by_id(invitation.id).state == "sent"
    assert outbox_of(invitation).attempts == 2
    actors.reset_transport()
