"""Issue 7: SMTP with PIPELINING (RFC 2920): MAIL, RCPT and DATA in one write, the message in a
second, every reply still checked, and refusals classified as without pipelining."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from typing import Any

import pytest

from engine.core.errors import PermanentDeliveryError, TransientDeliveryError
from engine.mail import SmtpTransport
from tests.faults import RecordingSink, smtp_transport

SENDER = "no-reply@portal.example"


@pytest.fixture
def sink() -> Iterator[tuple[RecordingSink, SmtpTransport]]:
    """aiosmtpd advertising PIPELINING, recording each message's bytes."""
    handler = RecordingSink(pipelining=True)
    with smtp_transport(handler) as transport:
        yield handler, transport


@pytest.fixture
def no_plain_sendmail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if the transport falls back to smtplib's one-command-at-a-time sendmail."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("sendmail used although the server offers PIPELINING")

    monkeypatch.setattr(smtplib.SMTP, "sendmail", refuse)


def message(n: int, body: bytes = b"Hello.\r\n") -> bytes:
    return (f"From: {SENDER}\r\nTo: jane@example.com\r\nSubject: test {n}\r\n"
            f"Message-ID: <m{n}@portal.example>\r\n\r\n").encode() + body


def send(transport: SmtpTransport, raw: bytes, to_addr: str = "jane@example.com") -> None:
    transport.send(from_addr=SENDER, to_addr=to_addr, message=raw, message_id="<m@portal.example>")


def test_pipelined_messages_arrive_byte_for_byte_on_one_connection(sink, no_plain_sendmail) -> None:
    handler, transport = sink
    sent = [message(n) for n in range(5)]
    for raw in sent:
        send(transport, raw)
    assert [raw for _, raw in handler.received] == sent
    assert len({peer for peer, _ in handler.received}) == 1


def test_lines_starting_with_a_dot_survive_the_end_of_data_marker(sink, no_plain_sendmail) -> None:
    handler, transport = sink
    raw = message(1, b".\r\n..two dots\r\n.leading\r\nlast line, no newline")
    send(transport, raw)
    [(_, got)] = handler.received
    assert got == raw + b"\r\n"  # what arrived is the message, with the line end SMTP requires


@pytest.mark.parametrize(
    ("where", "reply", "error", "code"),
    [
        ("mail", "451 4.3.0 sender check unavailable", TransientDeliveryError, 451),
        ("mail", "553 5.7.1 sender not allowed", PermanentDeliveryError, 553),
        ("rcpt", None, PermanentDeliveryError, 550),
        ("data", "452 4.3.1 out of space", TransientDeliveryError, 452),
        ("data", "554 5.6.0 message refused", PermanentDeliveryError, 554),
        ("data", "421 4.3.2 closing", TransientDeliveryError, 421),
    ],
)
def test_pipelined_refusals_are_classified_and_the_connection_goes_on(
    sink, no_plain_sendmail, where: str, reply: str | None, error: type[Exception], code: int
) -> None:
    handler, transport = sink
    if where == "mail":
        handler.mail_reply = reply
    elif where == "data":
        handler.data_reply = reply
    with pytest.raises(error) as caught:
        send(transport, message(1), to_addr="nobody@example.com" if where == "rcpt" else "jane@example.com")
    assert caught.value.smtp_code == code  # type: ignore[attr-defined]
    assert handler.received == []

    handler.mail_reply = handler.data_reply = None
    send(transport, message(2))  # after RSET (or, on 421, a new connection) the next one goes
    assert [raw for _, raw in handler.received] == [message(2)]


def test_a_line_break_in_an_address_is_refused_before_anything_is_sent(sink, no_plain_sendmail) -> None:
    handler, transport = sink
    with pytest.raises(ValueError, match="line break"):
        send(transport, message(1), to_addr="jane@example.com\r\nRCPT TO:<eve@example.com>")
    send(transport, message(2))
    assert [raw for _, raw in handler.received] == [message(2)]
