"""Ops (issue 5): queue figures, heartbeats, dead letters, metrics, JSON logs, the ops CLI.

Real Redis, real Dramatiq workers and consumers, a real SMTP sink; the dead letters are made
by Dramatiq itself (retries exhausted, or a consumer's nack), never written by hand.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import engine
from engine.core import heartbeat, logs, schema
from engine.core.broker import QUEUE
from engine.core.clock import SystemClock
from engine.core.db import connection, init_db
from engine.core.settings import get_settings
from engine.monitoring import deadletters, heartbeats, metrics
from engine.monitoring import figures as ops
from engine.operations import lookup
from tests.conftest import RunningWorker, links, token_of
from tests.faults import free_port
from workflows.actors import advance_invitation, enqueue_steps
from workflows.sweep import sweep

ROOT = Path(__file__).resolve().parent.parent


def status(broker: Any, clock: Any) -> ops.OpsStatus:
    return ops.collect(clock.now(), broker=broker, settings=get_settings())


def run_sweep(clock: Any, worker: RunningWorker) -> None:
    sweep(clock.now(), enqueue=enqueue_steps, lease_s=60)
    worker.drain()


def nack_next(broker: Any, count: int) -> None:
    """Fetch ``count`` messages of the invitations queue and dead-letter them, as a worker giving up does."""
    consumer = broker.consume(QUEUE, prefetch=1, timeout=20)
    try:
        for _ in range(count):
            for _ in range(200):
                message = next(consumer)
                if message is not None:
                    consumer.nack(message)
                    break
            else:
                raise AssertionError("no message to dead-letter")
    finally:
        consumer.close()


def scrape(reg: Any) -> dict[str, list[Any]]:
    """Samples of a registry's exposition, by metric family name."""
    text = metrics.render(reg).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def sample(samples: list[Any], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples)
    return float(found[0])


# --- 1. status ------------------------------------------------------------------------------

def test_status_counts_ready_delayed_in_flight_orphaned_and_dead_messages(broker, clock):
    for invitation_id in (1, 2, 3):
        advance_invitation.send(invitation_id)
    advance_invitation.send_with_options(args=(4,), delay=3_600_000)
    nack_next(broker, 1)  # one dead letter
    consumer = broker.consume(QUEUE, prefetch=1, timeout=20)
    held = None
    while held is None:
        held = next(consumer)  # one fetched and not acked: in flight

    [invitations, mail] = status(broker, clock).queues
    assert (invitations.ready, invitations.delayed, invitations.in_flight, invitations.dead) == (1, 1, 1, 1)
    assert invitations.orphaned == 0  # this consumer's broker beats
    assert (mail.ready, mail.delayed, mail.in_flight, mail.dead) == (0, 0, 0, 0)
    # Two minutes without a beat from its broker, and the held message counts as orphaned.
    later = int(time.time() * 1000) + 120_000
    [invitations, _] = ops.redis_queue_counts(broker.client, now_ms=later)
    assert invitations.orphaned == 1

    consumer.ack(held)
    consumer.close()


def test_status_shows_invitations_by_state_and_the_due_backlog(practice, client_factory, staff_by, clock, worker, sink):
    for _ in range(2):
        engine.invite(practice.id, client_factory().id, by=staff_by)
    worker.drain()
    first = status(worker.broker, clock)
    assert first.invitations["sent"] == 2 and first.invitations["queued"] == 0
    assert first.backlog.due == 0 and first.backlog.oldest_age_s is None

    # Three days and ten minutes later, with no sweep: both reminders are overdue by ten minutes.
    clock.advance(days=3, minutes=10)
    overdue = status(worker.broker, clock)
    assert overdue.backlog.due == 2
    assert overdue.backlog.oldest_age_s == pytest.approx(600)
    assert any("overdue" in p for p in overdue.problems)

    # A sweep claims them: no longer a backlog (they are leased), then sent.
    sweep(clock.now(), enqueue=enqueue_steps, lease_s=60)
    assert status(worker.broker, clock).backlog.due == 0
    worker.drain()
    assert status(worker.broker, clock).invitations["reminded"] == 2


def test_status_reports_deliveries_failed_in_the_last_hour(practice, client_factory, staff_by, clock, broker, sink):
    # One refused for good (5xx)
    sink.reply = "550 5.1.1 no such mailbox"
    running = RunningWorker(broker)
    running.worker.start()
    try:
        engine.invite(practice.id, client_factory().id, by=staff_by)
        running.drain()
    finally:
        running.worker.stop()
    # and one refused for now (4xx), not retried yet: its nudge is lost, we run the step once
    sink.reply = "451 4.3.0 try again later"
    later = engine.invite(practice.id, client_factory().id, by=staff_by)
    broker.flush_all()
    with pytest.raises(engine.TransientDeliveryError):
        advance_invitation(later.id)

    now = status(broker, clock)
    assert now.failures.failed == {"invitation": 1}
    assert now.failures.retrying == {"invitation": 1}
    assert any("failed for good" in p for p in now.problems)
    clock.advance(hours=1, seconds=1)
    assert status(broker, clock).failures.total_failed == 0


def test_status_sees_worker_and_scheduler_heartbeats(broker, clock, redis_client):
    from workflows import periodic

    assert status(broker, clock).workers == []
    problems = status(broker, clock).problems
    assert any("no worker" in p for p in problems) and any("no scheduler" in p for p in problems)

    running = RunningWorker(broker, threads=3)
    running.worker.start()
    try:
        [beat] = status(broker, clock).workers
        assert beat["threads"] == 3 and beat["pid"] == os.getpid() and beat["processed"] == 0
        assert 0 < beat["ttl_s"] <= heartbeat.WORKER_TTL_S
        advance_invitation.send(12345)  # no such invitation: the step does nothing, and is counted
        running.drain()
        [beater] = [m for m in broker.middleware if isinstance(m, heartbeat.WorkerHeartbeat)]
        beater.beat()  # the thread beats every few seconds; do not wait for it
        [beat] = status(broker, clock).workers
        assert beat["processed"] == 1 and beat["in_progress"] == 0
    finally:
        running.worker.stop()
    assert status(broker, clock).workers == []  # a clean stop removes the heartbeat at once

    periodic.run_sweep()  # the scheduler's own job: sweep, then heartbeat
    [sched] = status(broker, clock).schedulers
    assert sched["last_sweep"]["claimed"] == 0 and sched["interval_s"] == get_settings().sweep_interval_s
    assert not any("scheduler" in p for p in status(broker, clock).problems)
    assert heartbeats.sweep_totals(redis_client)["sweeps"] == 1


# --- 2. dead letters ------------------------------------------------------------------------

def test_dead_letters_list_actor_arguments_error_and_age(practice, client_factory, staff_by, clock, worker, sink):
    # Given a mail server that refuses every attempt for now
    sink.reply = "451 4.3.0 mailbox busy"
    invitation = engine.invite(practice.id, client_factory().id, by=staff_by)
    worker.drain()
    # Then the retries ran out: the invitation failed, and Dramatiq kept the message
    assert engine.portal_status(practice.id, invitation.client_id).status == "failed"
    [dead] = deadletters.list_dead(worker.broker, now=SystemClock().now())
    assert (dead.queue, dead.actor, dead.args) == ("invitations", "advance_invitation", [invitation.id])
    assert 1 <= dead.retries < get_settings().max_delivery_attempts + 2  # retried: a traceback was kept
    assert "TransientDeliveryError" in dead.error and "451" in dead.error
    assert 0 <= dead.age_s < 60
    assert status(worker.broker, clock).queues[0].dead == 1


def test_requeued_dead_letters_never_send_twice(practice, client_factory, staff_by, clock, broker, sink):
    # Given Ann's invitation was sent, and Ben's is still queued
    ann, ben = client_factory(email="ann@example.test"), client_factory(email="ben@example.test")
    running = RunningWorker(broker)
    running.worker.start()
    engine.invite(practice.id, ann.id, by=staff_by)
    running.drain()
    running.worker.stop()
    ben_invitation = engine.invite(practice.id, ben.id, by=staff_by)
    ann_invitation = lookup.live_invitation(ann.id)
    # And dead letters: Ben's nudge, a second nudge of Ben's, and a late nudge of Ann's
    advance_invitation.send(ben_invitation.id)
    advance_invitation.send(ann_invitation.id)
    nack_next(broker, 3)
    assert len(deadletters.list_dead(broker, now=SystemClock().now())) == 3

    # When every dead letter is requeued and a worker runs them
    running = RunningWorker(broker)
    running.worker.start()
    try:
        assert deadletters.requeue_all(broker, now=SystemClock().now()) == 3
        running.drain()
    finally:
        running.worker.stop()
    # Then each client has exactly one email, and no dead letter is left
    assert len(sink.to("ann@example.test")) == 1
    assert len(sink.to("ben@example.test")) == 1
    assert deadletters.list_dead(broker, now=SystemClock().now()) == []
    assert engine.portal_status(practice.id, ben.id).invitation_state == "sent"


def test_dead_letter_requeue_by_id_then_purge(broker, clock):
    for invitation_id in (7, 8, 9):
        advance_invitation.send(invitation_id)
    nack_next(broker, 3)
    letters = deadletters.list_dead(broker, now=SystemClock().now())
    # By its id, or by its Dramatiq message id: back on the queue, retry count reset
    assert deadletters.requeue(broker, letters[0].id, now=SystemClock().now()).args == letters[0].args
    assert deadletters.requeue(broker, letters[1].message_id, now=SystemClock().now()) is not None
    [queued] = ops.queue_counts(broker)[:1]
    assert (queued.ready, queued.dead) == (2, 1)
    with pytest.raises(engine.NotFound) as missing:
        deadletters.requeue(broker, letters[0].id, now=SystemClock().now())
    assert missing.value.code == "not_found"
    assert deadletters.purge(broker) == 1
    assert deadletters.list_dead(broker, now=SystemClock().now()) == []
    assert ops.queue_counts(broker)[0].ready == 2  # purging dead letters leaves the queue alone


# --- 3. metrics -----------------------------------------------------------------------------

def test_metrics_expose_every_documented_figure(practice, client_factory, staff_by, clock, broker, sink, redis_client):
    from workflows import periodic

    # Given one invitation whose nudge was lost: the sweep recovers it 90 s after it was created
    client = client_factory(email="late@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    broker.flush_all()
    worker = RunningWorker(broker)
    worker.worker.start()
    try:
        clock.advance(seconds=90)
        periodic.run_sweep()
        worker.drain()
        reg = metrics.registry(broker=lambda: broker, now=clock.now, dramatiq_dir="/nonexistent")
        invited = scrape(reg)["invites_delivery_latency_seconds"]
        # And its first reminder, sent 30 s after it fell due
        sent_at = engine.portal_status(practice.id, client.id).sent_at
        clock.set(sent_at + timedelta(days=3, seconds=30))
        run_sweep(clock, worker)
        # And one invitation refused for good
        sink.reply = "550 5.1.1 unknown user"
        engine.invite(practice.id, client_factory().id, by=staff_by)
        worker.drain()
        families = scrape(reg)
    finally:
        worker.worker.stop()

    for name in metrics.METRICS:
        assert name.removesuffix("_total") in families, name
    assert sample(families["invites_up"], "invites_up", component="database") == 1
    assert sample(families["invites_invitations"], "invites_invitations", state="reminded") == 1
    assert sample(families["invites_invitations"], "invites_invitations", state="failed") == 1
    sent = families["invites_emails_sent"]
    assert sample(sent, "invites_emails_sent_total", kind="invitation") == 1
    assert sample(sent, "invites_emails_sent_total", kind="reminder") == 1
    assert sample(families["invites_emails_failed"], "invites_emails_failed_total", kind="invitation") == 1
    # Creation to accept: 90 s for the invitation; due to accept: 30 s for the reminder (last hour only).
    assert sample(invited, "invites_delivery_latency_seconds_sum", kind="invitation") == pytest.approx(90)
    assert sample(invited, "invites_delivery_latency_seconds_bucket", kind="invitation", le="60.0") == 0
    assert sample(invited, "invites_delivery_latency_seconds_bucket", kind="invitation", le="120.0") == 1
    latency = families["invites_delivery_latency_seconds"]
    assert sample(latency, "invites_delivery_latency_seconds_count", kind="invitation") == 0
    assert sample(latency, "invites_delivery_latency_seconds_sum", kind="reminder") == pytest.approx(30)
    assert sample(families["invites_workers_alive"], "invites_workers_alive") == 1
    assert sample(families["invites_worker_threads"], "invites_worker_threads") == 4
    assert sample(families["invites_schedulers_alive"], "invites_schedulers_alive") == 1
    assert sample(families["invites_sweeps"], "invites_sweeps_total") == 1
    assert sample(families["invites_sweep_claimed"], "invites_sweep_claimed_total") == 1
    assert sample(families["invites_queue_messages"], "invites_queue_messages", queue="invitations", state="ready") == 0
    assert sample(families["invites_dead_letters"], "invites_dead_letters", queue="invitations") == 0
    assert sample(families["invites_due_backlog"], "invites_due_backlog") == 0

    # The operations guide documents every metric name.
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert [name for name in metrics.METRICS if f"`{name}" not in guide] == []


def test_metrics_say_when_the_broker_is_down(broker, clock):
    import redis

    from engine.core.broker import build_broker
    from engine.core.settings import Settings

    dead = build_broker(Settings(**{**get_settings().__dict__, "broker_url": f"redis://127.0.0.1:{free_port()}/0"}))
    assert isinstance(dead.client, redis.Redis)
    families = scrape(metrics.registry(broker=lambda: dead, now=clock.now, dramatiq_dir="/nonexistent"))
    assert sample(families["invites_up"], "invites_up", component="broker") == 0
    assert sample(families["invites_up"], "invites_up", component="database") == 1
    assert "invites_invitations" in families  # the database's figures are still there
    assert status(dead, clock).broker_error is not None


def test_dramatiq_metrics_from_a_worker_run_by_the_dramatiq_command(engine_runtime, redis_client, tmp_path):
    """Under ``dramatiq`` with WORKER_PROMETHEUS=1, Dramatiq's metrics join ours in one scrape."""
    redis_client.flushdb()
    init_db(f"sqlite:///{tmp_path / 'scrape.db'}")
    with connection():
        schema.upgrade()
    prom_dir, port = tmp_path / "prom", free_port()
    prom_dir.mkdir()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'scrape.db'}",  # upgraded above: a worker refuses a bare one
        "WORKER_PROMETHEUS": "1",
        "dramatiq_prom_host": "127.0.0.1",
        "dramatiq_prom_port": str(port),
        "dramatiq_prom_db": str(prom_dir),
    }
    proc = subprocess.Popen([sys.executable, "-m", "dramatiq", "worker", "-p", "1", "-t", "2"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for(lambda: heartbeats.workers(redis_client), proc, "the worker's heartbeat")
        # Refused at once, not retried: a dead letter. (Sent through this broker explicitly: a
        # RabbitMQ test may have left the actors bound to its broker.)
        engine_runtime.enqueue(advance_invitation.message("not-an-id"))
        _wait_for(lambda: ops.queue_counts(engine_runtime)[0].dead == 1, proc, "the dead letter")
        reg = metrics.registry(broker=lambda: engine_runtime, now=SystemClock().now, dramatiq_dir=str(prom_dir))
        _wait_for(lambda: "dramatiq_message_errors" in scrape(reg), proc, "Dramatiq's metrics")
        families = scrape(reg)
        errors = families["dramatiq_message_errors"]
        assert sample(errors, "dramatiq_message_errors_total", actor_name="advance_invitation") == 1
        assert sample(families["invites_workers_alive"], "invites_workers_alive") == 1
        assert sample(families["invites_dead_letters"], "invites_dead_letters", queue="invitations") == 1
        # Dramatiq's own exposition server (forked once the workers are up) answers on our port.
        _wait_for(lambda: b"dramatiq_messages_total" in _get(f"http://127.0.0.1:{port}/"), proc, "its server")
    finally:
        proc.send_signal(signal.SIGTERM)  # the main process stops its workers and the exposition server
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        redis_client.flushdb()


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bytes(response.read())
    except OSError:
        return b""


def _wait_for(condition: Any, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        assert proc.poll() is None, f"the worker exited with {proc.returncode} before {what}"
        time.sleep(0.1)
    raise AssertionError(f"no {what} after {timeout_s} s")


# --- 5. logs --------------------------------------------------------------------------------

def test_json_log_lines_carry_invitation_and_step_and_never_a_token(
    practice, client_factory, staff_by, clock, worker, sink
):
    stream = io.StringIO()
    handler = logs.make_handler("json", stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        # Invitations (one message each), then reminders in one batch message, then one that fails.
        clients = [client_factory() for _ in range(3)]
        for client in clients:
            engine.invite(practice.id, client.id, by=staff_by)
        worker.drain()
        clock.advance(days=3, minutes=1)
        run_sweep(clock, worker)
        sink.reply = "451 4.3.0 later"
        engine.invite(practice.id, client_factory().id, by=staff_by)
        worker.drain()
        # A mistake that would leak a link (an error quoting it) is caught by the safety net.
        leaked = links(sink.messages[0])["set_password"]
        logging.getLogger("invites.mistake").warning("could not open %s", leaked, extra={"url": leaked})
    finally:
        root.removeHandler(handler)
        root.setLevel(level)

    text = stream.getvalue()
    records = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    [mistake] = [r for r in records if r["logger"] == "invites.mistake"]
    assert "token=[redacted]" in mistake["msg"] and "token=[redacted]" in mistake["url"]
    tokens = [token_of(message) for message in sink.messages]
    assert len(tokens) == 6  # three invitations and three reminders reached the sink
    assert not [t for t in tokens if t in text]
    step_loggers = ("invites.steps", "invites.actors", "engine.mail.transport", "dramatiq.middleware.retries")
    step_lines = [r for r in records if r["logger"].startswith(step_loggers)
                  or re.match(r"Failed to process message", r["msg"])]
    assert {r.get("action") for r in step_lines} >= {"invitation_sent", "reminder_sent", "smtp_sent",
                                                     "invitation_failed"}
    assert any(r["logger"].startswith("dramatiq.middleware.retries") for r in step_lines)
    missing = [r for r in step_lines if "step" not in r or not isinstance(r.get("invitation_id"), int)]
    assert missing == []
    # In the batch message, each step's lines name their own invitation, not the batch.
    batch_sends = [r for r in step_lines if r["step"] == "advance_invitations" and r.get("action") == "smtp_sent"]
    assert len({r["invitation_id"] for r in batch_sends}) == 3


# --- the ops CLI ----------------------------------------------------------------------------

def test_cli_ops_status_and_dead_letters(practice, client_factory, staff_by, clock, broker, capsys):
    from engine.cli.main import OK, REFUSED, main

    engine.invite(practice.id, client_factory().id, by=staff_by)
    nack_next(broker, 1)
    assert main(["ops", "status", "--json"]) == OK
    shown = json.loads(capsys.readouterr().out)
    assert shown["invitations"]["queued"] == 1 and shown["dead_letters"] == 1
    assert main(["ops", "status"]) == OK
    text = capsys.readouterr().out
    assert "Needs attention" in text and "1 dead letter:" in text and "invitations" in text

    assert main(["ops", "dead-letters", "list", "--json"]) == OK
    [letter] = json.loads(capsys.readouterr().out)
    assert letter["actor"] == "advance_invitation"
    assert main(["ops", "dead-letters", "list"]) == OK
    assert letter["id"] in capsys.readouterr().out
    assert main(["ops", "dead-letters", "requeue", "no-such-id"]) == REFUSED
    assert "not_found" in capsys.readouterr().err
    assert main(["ops", "dead-letters", "requeue", letter["id"]]) == OK
    assert "requeued advance_invitation" in capsys.readouterr().out
    nack_next(broker, 1)
    assert main(["ops", "dead-letters", "requeue", "--all"]) == OK
    assert capsys.readouterr().out.strip() == "requeued 1 dead letters"
    nack_next(broker, 1)
    assert main(["ops", "dead-letters", "purge"]) == OK
    assert capsys.readouterr().out.strip() == "purged 1 dead letters"
    with pytest.raises(SystemExit):
        main(["ops", "dead-letters", "requeue"])  # an id or --all
