"""Things that break for real, for the reliability tests: a scripted SMTP server, a silent one,
a private redis-server, and child processes that are cleaned up however a test ends."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from engine.mail import SmtpTransport

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"


def free_port() -> int:
    """A TCP port nobody listens on (bound to 0 by the kernel, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Callable[[], Any], *, timeout_s: float, what: str, every_s: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


# --- SMTP -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slow:
    """Accept the message, but answer DATA only after ``seconds`` (past the client's timeout)."""

    seconds: float


@dataclass(frozen=True)
class Attempt:
    """One DATA command the server saw, whatever it answered."""

    at: float  # time.monotonic()
    to: str
    message_id: str
    reply: str


@dataclass
class ScriptedSmtp:
    """An aiosmtpd handler whose answers the test scripts, per recipient.

    ``script[address]`` is a list of DATA answers used in order ("451 4.3.0 later", "250",
    ``Slow(3)``); once it is used up, or for an address without one, ``default`` answers.
    ``rcpt`` refuses recipients at RCPT time. Every DATA is recorded in ``attempts``; only the
    messages answered with 250 (or ``Slow``, which stores first) are in ``accepted``.
    ``on_accept(message, peer)`` runs in the server's thread after a message is stored, before
    the reply.
    """

    default: str = "250 2.0.0 OK"
    script: dict[str, deque[str | Slow]] = field(default_factory=lambda: defaultdict(deque))
    rcpt: dict[str, str] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    accepted: list[email.message.EmailMessage] = field(default_factory=list)
    on_accept: Callable[[email.message.EmailMessage, tuple[str, int]], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self, address: str, *replies: str | Slow) -> None:
        with self.lock:
            self.script[address].extend(replies)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        refusal = self.rcpt.get(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        to = envelope.rcpt_tos[0]
        with self.lock:
            queued = self.script.get(to)
            step = queued.popleft() if queued else self.default
            reply = "250 2.0.0 OK" if isinstance(step, Slow) else step
            self.attempts.append(Attempt(time.monotonic(), to, str(message["Message-ID"]), reply))
            if reply.startswith("250"):
                self.accepted.append(message)
        if reply.startswith("250") and self.on_accept is not None:
            self.on_accept(message, session.peer)
        if isinstance(step, Slow):
            await asyncio.sleep(step.seconds)
        return reply

    def attempts_to(self, address: str) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if a.to == address]

    def accepted_to(self, address: str) -> list[email.message.EmailMessage]:
        with self.lock:
            return [m for m in self.accepted if m["To"].addresses[0].addr_spec == address]


@contextmanager
def run_smtp(handler: Any, port: int | None = None) -> Iterator[int]:
    """Run ``handler`` as an SMTP server on ``port`` (a free one by default); yields the port."""
    port = port or free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


class RecordingSink:
    """An aiosmtpd handler that keeps the messages it accepts and refuses on demand.

    RCPT to ``nobody@…`` is refused for good (550) and DATA for ``later@…`` for now (451);
    ``mail_reply`` / ``data_reply``, when set, answer every MAIL / DATA. ``pipelining`` adds
    PIPELINING (RFC 2920) to the EHLO reply, which aiosmtpd does not offer by itself.
    """

    def __init__(self, *, pipelining: bool = False) -> None:
        self.pipelining = pipelining
        self.received: list[tuple[Any, bytes]] = []  # (the client's address, the message)
        self.recipients: list[str] = []
        self.mail_reply: str | None = None
        self.data_reply: str | None = None
        self.lock = threading.Lock()

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        if envelope.rcpt_tos[0].startswith("later@"):
            return "451 4.3.0 try again later"
        with self.lock:
            self.received.append((session.peer, envelope.original_content))
            self.recipients.extend(envelope.rcpt_tos)
        return "250 2.0.0 OK"

    def peers(self) -> list[Any]:
        with self.lock:
            return [peer for peer, _ in self.received]


@contextmanager
def smtp_transport(handler: Any) -> Iterator[SmtpTransport]:
    """Our SMTP transport talking to ``handler`` run as a server; closed after."""
    with run_smtp(handler) as port:
        transport = SmtpTransport(f"smtp://127.0.0.1:{port}", timeout_s=5)
        try:
            yield transport
        finally:
            transport.close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A port where the kernel completes the TCP handshake and then nobody ever speaks."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        yield int(silent.getsockname()[1])


# --- processes --------------------------------------------------------------------------------

class Processes:
    """Child processes started by one test, each in its own process group, all ended at exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()  # the child holds its own descriptor
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 15) -> None:
        """Signal the process's whole group and reap it (SIGKILL if it lingers)."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        else:
            # The leader is gone; a child of its group may not be.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.running)):
            self.stop(proc, signal.SIGKILL)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks: Iterable[Path] = list(task_dir.iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            found += [int(x) for x in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def socket_owner(local_port: int, remote_port: int, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` holds the TCP connection 127.0.0.1:local_port → :remote_port (Linux /proc)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            ports = (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16))
            if ports == (local_port, remote_port):
                inode = fields[9]
                break
        if inode:
            break
    if not inode or inode == "0":
        return None
    wanted = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == wanted:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


class PrivateRedis:
    """A redis-server of the test's own (no persistence), so it can be killed and restarted."""

    def __init__(self, processes: Processes, port: int | None = None) -> None:
        self.processes = processes
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = self.processes.start(
            f"redis-{self.port}",
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.processes.log_dir)],
            dict(os.environ),
        )
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            wait_for(lambda: _pings(client), timeout_s=10, what=f"redis-server on port {self.port}")
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.processes.stop(self.proc, signal.SIGKILL)
            self.proc = None


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
