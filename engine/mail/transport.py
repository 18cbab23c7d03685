"""Delivering built messages: to a folder of ``.eml`` files, or to an SMTP server.

``SmtpTransport`` keeps one connection per thread (smtplib objects are not thread-safe), checks
an idle one with NOOP before use, reconnects once when a reused connection turns out dead, and
recycles it after a number of messages because servers cap messages per session. Every socket
operation has a timeout: smtplib's default is to block forever. Errors come out as
``TransientDeliveryError`` (try again later) or ``PermanentDeliveryError`` (never will work).
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from engine.core.errors import DeliveryError, InvalidInput, PermanentDeliveryError, TransientDeliveryError
from engine.core.settings import Settings

__all__ = ["FileTransport", "SmtpTransport", "Transport", "open_transport"]

logger = logging.getLogger(__name__)

_AUTH_CODES = frozenset({530, 534, 535, 538})
_SMTP_SCHEMES = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._@+-]+")


class Transport(Protocol):
    """Something that delivers a finished message to one recipient."""

    def send(self, *, from_addr: str, to_addr: str, message: bytes, message_id: str) -> None:
        """Deliver ``message``; raise ``TransientDeliveryError`` or ``PermanentDeliveryError``."""
        ...

    def close(self) -> None:
        """Release connections; the transport may be used again afterwards."""
        ...


class FileTransport:
    """Writes each message to ``<folder>/<message id>.eml``: the default outbox for dev and tests.

    The file appears whole or not at all (temporary file, then ``os.replace``), and sending the
    same Message-ID again overwrites it, which keeps a redelivered step harmless.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path_for(self, message_id: str) -> Path:
        """The file a message with this id is written to."""
        stem = _UNSAFE_FILE_CHARS.sub("_", message_id.strip().strip("<>")).strip("._")
        if not stem:
            raise InvalidInput("message_id has nothing usable as a file name")
        return self.folder / f"{stem[:200]}.eml"

    def send(self, *, from_addr: str, to_addr: str, message: bytes, message_id: str) -> None:
        """Write ``message`` atomically; a full disk is worth retrying, hence transient."""
        target = self.path_for(message_id)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".eml")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(message)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            raise TransientDeliveryError(f"cannot write to the outbox folder: {exc}") from exc
        logger.info(
            "email written to outbox",
            extra={"action": "mail_outbox", "message_id": message_id, "path": str(target)},
        )

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"FileTransport({str(self.folder)!r})"


@dataclass(eq=False)  # identity, so sessions can live in a set
class _Session:
    smtp: smtplib.SMTP
    last_used: float
    sent: int = 0


@cache
def _local_hostname() -> str:
    # smtplib asks DNS for the FQDN on every connection; once per process is enough.
    return socket.getfqdn()


def _classify(exc: BaseException, recipient: str) -> DeliveryError:
    """Map smtplib/socket errors to ours: 5xx is permanent, everything else is worth a retry."""
    code: int | None = None
    text = str(exc)
    raw: bytes | str = b""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, raw = exc.recipients.get(recipient, next(iter(exc.recipients.values()), (None, b"")))
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    elif isinstance(exc, smtplib.SMTPResponseException):
        code, raw = exc.smtp_code, exc.smtp_error
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    elif isinstance(exc, smtplib.SMTPNotSupportedError):
        # STARTTLS or AUTH not offered: configuration, which a retry will not fix. Sending in
        # the clear instead of STARTTLS is never acceptable.
        return PermanentDeliveryError(f"SMTP server refused: {text}")
    message = f"SMTP {code} {text}".strip() if code else f"SMTP connection failed: {text or type(exc).__name__}"
    # Authentication refused (530, 534, 535, 538) is our configuration, not the recipient:
    # failing every invitation at once would bury staff in "failed"; retries give ops time.
    if code is not None and 500 <= code < 600 and code not in _AUTH_CODES:
        return PermanentDeliveryError(message, smtp_code=code)
    return TransientDeliveryError(message, smtp_code=code)


# An address that needs no quoting or parsing in a MAIL/RCPT command (what validate_address
# lets through); anything else goes through smtplib.quoteaddr.
_PLAIN_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@]+@[^\s<>()\[\]\\,;:\"@]+")


def _quoted(address: str) -> str:
    if "\r" in address or "\n" in address:  # what smtplib's putcmd refuses, for the same reason
        raise ValueError("an SMTP command cannot contain a line break")
    return f"<{address}>" if _PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


def _sendmail(smtp: smtplib.SMTP, from_addr: str, to_addr: str, message: bytes) -> dict[str, tuple[int, bytes]]:
    """``smtp.sendmail(from_addr, [to_addr], message)``, pipelined (RFC 2920) when the server offers it.

    MAIL, RCPT and DATA go out in one write and the message in a second: two round trips
    instead of four, a third of smtplib's CPU per message (bench/RESULTS.md). Every reply is
    still read and checked in order, and a refusal raises what ``sendmail`` raises.
    """
    if not smtp.has_extn("pipelining"):
        return smtp.sendmail(from_addr, [to_addr], message)
    size = f" SIZE={len(message)}" if smtp.has_extn("size") else ""
    smtp.send(f"MAIL FROM:{_quoted(from_addr)}{size}\r\nRCPT TO:{_quoted(to_addr)}\r\nDATA\r\n")
    replies = []
    for _ in range(3):
        replies.append(reply := smtp.getreply())
        if reply[0] == 421:  # the server is closing: nothing more will come
            smtp.close()
            break
    mail, rcpt, data = (replies + [(421, b"")] * 3)[:3]
    if data[0] == 354 and (mail[0] != 250 or rcpt[0] not in (250, 251)):
        smtp.send(".\r\n")  # DATA was accepted anyway: end it empty before resetting
        smtp.getreply()
    if mail[0] != 250:
        _reset(smtp, mail[0])
        raise smtplib.SMTPSenderRefused(mail[0], mail[1], from_addr)
    if rcpt[0] not in (250, 251):
        _reset(smtp, rcpt[0])
        raise smtplib.SMTPRecipientsRefused({to_addr: rcpt})
    if data[0] != 354:
        _reset(smtp, data[0])
        raise smtplib.SMTPDataError(*data)
    body = _dot_stuffed(message)
    smtp.send(body + (b"." if body.endswith(b"\r\n") else b"\r\n.") + b"\r\n")
    code, text = smtp.getreply()
    if code != 250:
        _reset(smtp, code)
        raise smtplib.SMTPDataError(code, text)
    return {}


def _dot_stuffed(message: bytes) -> bytes:
    """RFC 5321 4.5.2: a line that starts with "." gets another one, as smtplib's quotedata does.

    ``bytes.replace`` scans 13 kB in 11 us; the multiline regex it replaces took 60 us, a tenth
    of a worker's CPU per email, because the compiled HTML has a CSS line starting with a dot.
    """
    body = message.replace(b"\n.", b"\n..")
    return b"." + body if body.startswith(b".") else body


def _reset(smtp: smtplib.SMTP, code: int) -> None:
    """After a refusal, as smtplib does: hang up on 421, else RSET (a dead server shows next time)."""
    if code == 421:
        smtp.close()
        return
    try:
        smtp.rset()
    except smtplib.SMTPServerDisconnected:
        pass


class SmtpTransport:
    """Delivers over SMTP: ``smtp://``, ``smtp+starttls://`` or ``smtps://``, user:pass optional.

    Ports default to 25, 587 and 465. STARTTLS and SMTPS verify the certificate and host
    name with ``ssl.create_default_context()`` (smtplib's own default verifies nothing), and a
    server that does not offer STARTTLS is a permanent error, never a fallback to plaintext.
    """

    #: A connection idle longer than this is checked with NOOP before it is used.
    idle_check_s = 30.0
    #: Messages per connection before it is closed and a new one opened.
    max_messages_per_connection = 100

    def __init__(self, url: str, timeout_s: float, *, tls_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _SMTP_SCHEMES or not parts.hostname:
            raise InvalidInput("MAIL_URL must look like smtp[s|+starttls]://[user:pass@]host[:port]")
        self.scheme = parts.scheme
        self.host = parts.hostname
        try:
            self.port = parts.port or _SMTP_SCHEMES[parts.scheme]
        except ValueError as exc:
            raise InvalidInput("MAIL_URL has an invalid port") from exc
        self.username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self.timeout_s = timeout_s
        self._context = tls_context or ssl.create_default_context()
        self._local = threading.local()
        # Every thread's session, so close() can end them all (each thread reconnects later).
        self._sessions: set[_Session] = set()
        self._lock = threading.Lock()
        if self.username and self.scheme == "smtp" and self.host not in ("localhost", "127.0.0.1", "::1"):
            logger.warning(
                "SMTP credentials will cross the network unencrypted; use smtp+starttls:// or smtps://",
                extra={"action": "smtp_plaintext_auth", "host": self.host},
            )

    def __repr__(self) -> str:
        # Never the password: this lands in logs and tracebacks.
        user = f"{self.username}@" if self.username else ""
        return f"SmtpTransport('{self.scheme}://{user}{self.host}:{self.port}')"

    def _connect(self) -> _Session:
        # Connecting ourselves rather than in the constructor lets us close the socket when
        # the greeting never comes; smtplib reads _host for the TLS server name.
        smtp: smtplib.SMTP
        if self.scheme == "smtps":
            smtp = smtplib.SMTP_SSL(timeout=self.timeout_s, local_hostname=_local_hostname(), context=self._context)
        else:
            smtp = smtplib.SMTP(timeout=self.timeout_s, local_hostname=_local_hostname())
        smtp._host = self.host  # type: ignore[attr-defined]
        try:
            code, reply = smtp.connect(self.host, self.port)
            if code != 220:
                raise smtplib.SMTPConnectError(code, reply)
            smtp.ehlo()
            if self.scheme == "smtp+starttls":
                smtp.starttls(context=self._context)
                smtp.ehlo()
            if self.username:
                smtp.login(self.username, self._password or "")
        except BaseException:
            smtp.close()
            raise
        session = _Session(smtp, time.monotonic())
        with self._lock:
            self._sessions.add(session)
        logger.debug("smtp connected", extra={"action": "smtp_connect", "host": self.host, "port": self.port})
        return session

    def _drop(self, session: _Session, *, polite: bool) -> None:
        with self._lock:
            self._sessions.discard(session)
        if self._local.__dict__.get("session") is session:
            self._local.session = None
        try:
            if polite:
                session.smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass  # the server is gone or rude; the socket is closed below either way
        finally:
            session.smtp.close()

    def _session(self) -> tuple[_Session, bool]:
        """This thread's session and whether it was reused (only a reused one may be stale)."""
        session: _Session | None = getattr(self._local, "session", None)
        if session is not None and session.smtp.sock is None:  # closed by close() or after a 421
            self._drop(session, polite=False)
            session = None
        if session is not None and time.monotonic() - session.last_used > self.idle_check_s:
            try:
                alive = session.smtp.noop()[0] == 250
            except (smtplib.SMTPException, OSError):
                alive = False
            if not alive:
                self._drop(session, polite=False)
                session = None
        if session is not None:
            return session, True
        self._local.session = session = self._connect()
        return session, False

    def _sendmail(self, from_addr: str, to_addr: str, message: bytes) -> dict[str, tuple[int, bytes]]:
        session, reused = self._session()
        try:
            try:
                refused = _sendmail(session.smtp, from_addr, to_addr, message)
            except smtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                # The server dropped a connection we had kept: one fresh attempt.
                self._drop(session, polite=False)
                self._local.session = session = self._connect()
                refused = _sendmail(session.smtp, from_addr, to_addr, message)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException):
            # The server answered and smtplib sent RSET (or closed the socket on 421, which
            # _session notices): the connection can carry the next message.
            session.last_used = time.monotonic()
            raise
        except BaseException:
            self._drop(session, polite=False)  # mid-conversation failure: state unknown
            raise
        session.sent += 1
        session.last_used = time.monotonic()
        if session.sent >= self.max_messages_per_connection:
            self._drop(session, polite=True)
        return refused

    def send(self, *, from_addr: str, to_addr: str, message: bytes, message_id: str) -> None:
        """Send ``message`` to ``to_addr``; raises Transient/PermanentDeliveryError.

        A connection lost after the message data but before the server's reply is
        ambiguous (the mail may have gone): it is reported as transient, so delivery is
        at-least-once.
        """
        try:
            refused = self._sendmail(from_addr, to_addr, message)
            if refused:  # only possible with several recipients; kept so nothing slips by
                raise smtplib.SMTPRecipientsRefused(refused)
        except (smtplib.SMTPException, OSError) as exc:
            error = _classify(exc, to_addr)
            logger.warning(
                "smtp send failed",
                extra={"action": "smtp_failed", "message_id": message_id, "smtp_code": error.smtp_code},
            )
            raise error from exc
        # DEBUG: the step that sent it logs the email at INFO; a second line per email cost a
        # quarter of a busy worker's throughput (logging's lock and write, bench/RESULTS.md).
        logger.debug("email sent", extra={"action": "smtp_sent", "message_id": message_id})

    def close(self) -> None:
        """Quit every thread's connection (at shutdown, with no send running); a later send reconnects."""
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            self._drop(session, polite=True)


def open_transport(settings: Settings) -> Transport:
    """The transport ``settings.mail_url`` asks for: SMTP for ``smtp*://``, else the outbox folder."""
    if urlsplit(settings.mail_url).scheme in _SMTP_SCHEMES:
        return SmtpTransport(settings.mail_url, settings.smtp_timeout_s)
    folder = settings.outbox_dir()
    if folder is None:  # cannot happen: outbox_dir() is None only for SMTP URLs
        raise InvalidInput(f"MAIL_URL scheme not understood: {urlsplit(settings.mail_url).scheme}")
    return FileTransport(folder)
