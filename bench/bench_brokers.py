"""Redis vs RabbitMQ as our broker (docs/deploy.md): enqueue rate, and how long until a killed
worker's message runs again.

Enqueue: ``advance_invitation`` messages sent one after the other from one thread, through the
broker ``engine.core.broker.build_broker`` makes (RabbitMQ with publisher confirms), and RabbitMQ
without confirms for comparison.

Redelivery: worker A takes an invitation's first step and hangs in an SMTP conversation with a
server that never answers; A is then killed with SIGKILL (a crash, an OOM kill: no graceful shutdown).
Worker B, idle on the same queue with a working SMTP sink, sends the email when the broker
hands the message to it. No scheduler runs, so the sweep's lease plays no part: the figure is
the broker's own redelivery. ``STEP_TIME_LIMIT_MS=2000`` lets B take over A's outbox row.

Redis is a private ``redis-server`` this script starts on a free port; RabbitMQ is
``BENCH_AMQP_URL`` (a vhost of its own: the queue names are fixed).

    BENCH_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/invites_test_scale \\
    .venv/bin/python -m bench.bench_brokers [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import common

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def silent_smtp() -> tuple[int, threading.Event, socket.socket]:
    """A server that accepts and never greets; the event is set at its first connection."""
    server = socket.create_server(("127.0.0.1", 0))
    connected = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return
            connected.set()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1], connected, server


def one_run(broker_url: str, sink: common.SmtpSink, folder: Path) -> float:
    """Seconds from A's SIGKILL until B's email reached the sink."""
    db_url = f"sqlite:///{folder / 'redelivery.db'}"
    env = {**os.environ, "BROKER_URL": broker_url, "DATABASE_URL": db_url, "STEP_TIME_LIMIT_MS": "2000",
           "LOG_FORMAT": "text"}
    setup = (
        "import engine; from engine.core.runtime import boot; from engine import schema; from engine.core.db import db;"
        "boot(); db.connect(); schema.drop_all(); schema.upgrade();"
        "p = engine.create_practice('Redelivery Vets');"
        "a = engine.create_staff(p.id, 'Ada', 'ada@r.test', 'admin');"
        "engine.create_client(p.id, 'Rex', email='rex@r.test', consent=True, invite=True, by=f'staff:{a.id}')"
    )
    port, connected, server = silent_smtp()
    dramatiq = [str(Path(sys.executable).parent / "dramatiq"), "--processes", "1", "--threads", "1", "worker"]
    log = open(folder / "workers.log", "ab")  # noqa: SIM115
    a = subprocess.Popen(dramatiq, cwd=common.ROOT, env={**env, "MAIL_URL": f"smtp://127.0.0.1:{port}",
                                                           "SMTP_TIMEOUT_S": "600"},
                         stdout=log, stderr=log, start_new_session=True)
    b = None
    try:
        subprocess.run([sys.executable, "-c", setup], cwd=common.ROOT, env=env, check=True)
        if not connected.wait(60):
            raise RuntimeError("worker A never reached the SMTP server")
        before = sink.count()
        b = subprocess.Popen(dramatiq, cwd=common.ROOT, env={**env, "MAIL_URL": sink.url},
                             stdout=log, stderr=log, start_new_session=True)
        time.sleep(3)  # B is up and polling before A dies
        os.killpg(a.pid, signal.SIGKILL)
        killed = time.perf_counter()
        return sink.wait_for(before + 1, timeout_s=1800) - killed
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
        server.close()
        log.close()


def enqueue_rate(broker: Any, n: int) -> float:
    """Messages per second, one ``enqueue`` after the other (after a warm-up)."""
    from workflows.actors import advance_invitation

    for i in range(200):
        broker.enqueue(advance_invitation.message(i + 1))
    started = time.perf_counter()
    for i in range(n):
        broker.enqueue(advance_invitation.message(i + 1))
    rate = n / (time.perf_counter() - started)
    broker.flush_all()
    return rate


def enqueue_figures(urls: dict[str, str], n: int, repeat: int) -> None:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from engine.core.broker import build_broker
    from engine.core.runtime import boot
    from engine.core.settings import Settings

    os.environ.update(DATABASE_URL="sqlite:///:memory:", BROKER_URL=next(iter(urls.values())))
    boot()  # declares the actors (on a broker we do not use here)
    brokers = {name: build_broker(Settings.from_env({**os.environ, "BROKER_URL": url})) for name, url in urls.items()}
    if "rabbitmq" in urls:
        brokers["rabbitmq, no confirms"] = RabbitmqBroker(url=urls["rabbitmq"], confirm_delivery=False)
    for name, broker in brokers.items():
        figure = common.Figure(f"{name}: enqueue, one thread", "msg/s")
        figure.values = [enqueue_rate(broker, n) for _ in range(repeat)]
        print(figure, flush=True)
        broker.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument("--enqueue", type=int, default=5000, help="messages per enqueue run")
    args = parser.parse_args(argv)
    common.header("brokers: enqueue rate; redelivery of a SIGKILLed worker's message, no sweep")
    redis_port = common.free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redelivery-") as tmp:
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            common.wait_for_port(redis_port)
            urls = {"redis": f"redis://127.0.0.1:{redis_port}/0", "rabbitmq": AMQP_URL}
            urls = {name: urls[name] for name in args.brokers.split(",")}
            enqueue_figures(urls, args.enqueue, args.repeat)
            with common.smtp_sink() as sink:
                for name in urls:
                    figure = common.Figure(f"{name}: kill → email sent by the other worker", "s")
                    for _ in range(args.repeat):
                        figure.values.append(one_run(urls[name], sink, Path(tmp)))
                        print(f"  {name}: {figure.values[-1]:.1f} s", flush=True)
                    print(figure, f"(min {min(figure.values):.1f}, max {max(figure.values):.1f})", flush=True)
        finally:
            redis.terminate()
            redis.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
