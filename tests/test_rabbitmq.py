"""RabbitMQ as the other broker (issue 6): what differs from Redis, and our guards for it.

The workflow itself runs on both brokers through ``both_brokers()`` (tests/test_workflow.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

import engine
from engine.core.broker import build_broker
from engine.core.settings import Settings
from tests.conftest import TEST_AMQP_URL, _backends
from workflows.actors import advance_invitation

ROOT = Path(__file__).resolve().parent.parent
DRAMATIQ = str(Path(sys.executable).parent / "dramatiq")
on_one_database = pytest.mark.parametrize("database_url", _backends()[:1], indirect=True)


class SilentSmtpServer:
    """Accepts connections and never greets: an SMTP conversation that hangs until its timeout."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connected = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.connected.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent_smtp() -> Iterator[SilentSmtpServer]:
    server = SilentSmtpServer()
    yield server
    server.close()


def _ready_count(queue: str) -> int:
    """Messages ready in ``queue`` (RabbitMQ leaves out the ones a consumer holds unacked)."""
    connection = pika.BlockingConnection(pika.URLParameters(TEST_AMQP_URL))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


@on_one_database
def test_rabbitmq_gives_a_killed_workers_message_back_at_once(broker, rabbitmq_broker, database_url, silent_smtp,
                                                             tmp_path):
    # Given an invitation whose step a worker process is running, stuck in an SMTP conversation
    practice = engine.create_practice("Rabbit Vets")
    admin = engine.create_staff(practice.id, "Ada", "ada@rabbit.test", "admin")
    client = engine.create_client(practice.id, "Rita", email="rita@rabbit.test", consent=True, invite=True,
                                  by=f"staff:{admin.id}")
    invitation_id = engine.portal_status(practice.id, client.id).invitation_id
    rabbitmq_broker.flush_all()
    rabbitmq_broker.enqueue(advance_invitation.message(invitation_id))
    env = {**os.environ, "BROKER_URL": TEST_AMQP_URL, "DATABASE_URL": database_url,
           "MAIL_URL": f"smtp://127.0.0.1:{silent_smtp.port}", "SMTP_TIMEOUT_S": "120"}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([DRAMATIQ, "--processes", "1", "--threads", "1", "worker"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert silent_smtp.connected.wait(60), log.read_text()[-3000:]
        assert _ready_count("invitations") == 0  # held, unacked, by the worker
        # When the worker process is killed (no graceful shutdown, no requeue of its own)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed_at = time.monotonic()
        # Then RabbitMQ puts the message back at once: it saw the connection close. (Redis would
        # wait for the dead worker's heartbeat to age 60 s and a maintenance pass; the sweep's
        # lease is what bounds recovery there.)
        while _ready_count("invitations") != 1:
            assert time.monotonic() - killed_at < 10, "the message did not come back within 10 s"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rabbitmq_broker.flush_all()


def test_rabbitmq_worker_refuses_limits_beyond_the_consumer_timeout(tmp_path):
    # Given a RabbitMQ whose consumer_timeout (1 min) is shorter than a step's time limit (1.5 min)
    env = {**os.environ, "BROKER_URL": TEST_AMQP_URL, "DATABASE_URL": f"sqlite:///{tmp_path / 'invites.db'}",
           "RABBITMQ_CONSUMER_TIMEOUT_MS": "60000", "STEP_TIME_LIMIT_MS": "90000"}
    subprocess.run([sys.executable, "-m", "engine.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                   capture_output=True, timeout=60)  # a worker refuses a database without its schema
    # When a worker starts, it stops at once and names the actors that would be cut off
    run = subprocess.run([DRAMATIQ, "--processes", "1", "--threads", "1", "worker"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "not below RabbitMQ's consumer_timeout of 60000 ms" in run.stderr
    assert "advance_invitation (90000 ms)" in run.stderr


def test_rabbitmq_dead_letter_ttl_comes_from_the_settings(rabbitmq_broker, monkeypatch):
    from dramatiq.brokers import rabbitmq

    monkeypatch.setattr(rabbitmq, "DEAD_MESSAGE_TTL", rabbitmq.DEAD_MESSAGE_TTL)  # restored after
    # Given DEAD_MESSAGE_TTL_MS set to one hour
    settings = Settings.from_env({**os.environ, "BROKER_URL": TEST_AMQP_URL, "DEAD_MESSAGE_TTL_MS": "3600000"})
    probe = build_broker(settings)
    queue = f"ttl_probe_{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(TEST_AMQP_URL))
    try:
        # When its queues are declared
        probe.declare_queue(queue, ensure=True)
        channel = connection.channel()
        # Then the dead-letter queue keeps messages one hour: RabbitMQ accepts that TTL again
        channel.queue_declare(f"{queue}.XQ", durable=True, arguments={"x-message-ttl": 3_600_000})
        # and refuses any other (so every process must use the same setting)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.queue_declare(f"{queue}.XQ", durable=True, arguments={"x-message-ttl": 7 * 86_400_000})
        assert refused.value.reply_code == 406
    finally:
        cleanup: Any = connection.channel()
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            cleanup.queue_delete(name)
        connection.close()
        probe.close()
