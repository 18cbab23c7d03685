"""The email pipeline: templates, message bytes, and delivery to a folder or a real SMTP server."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import formataddr
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from engine.core.errors import InvalidInput, MalformedEmail, PermanentDeliveryError, TransientDeliveryError
from engine.core.settings import Settings
from engine.mail import (
    FileTransport,
    SmtpTransport,
    build_message,
    build_message_reference,
    clean_header_text,
    compile_all,
    make_message_id,
    open_transport,
    parse_mailbox,
    render_email,
    validate_address,
)
from tests.faults import RecordingSink, free_port, run_smtp

DATE = datetime(2026, 11, 30, 15, 30, tzinfo=UTC)
HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type")
LONG_URL = "https://portal.example/p/7/set-password?token=" + "Ab9_-" * 300  # 1,546 characters


def invitation_context(**changes: object) -> dict[str, object]:
    context: dict[str, object] = {
        "practice_name": "Smith & Co Accountants",
        "logo_url": "https://cdn.example/logo.png",
        "client_name": "Jane Doe",
        "sign_in_url": "https://portal.example/p/7/sign-in",
        "set_password_url": "https://portal.example/p/7/set-password?token=tok123&x=1",
        "expires_on": "Monday 14 December 2026",
        "custom_message": "",
        "documents_waiting": False,
        "portal_url": "https://portal.example/p/7",
    }
    context.update(changes)
    return context


def message_args(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "from_addr": "Smith & Co <no-reply@portal.example>",
        "to_addr": "jane@example.com",
        "to_name": "Jane Doe",
        "subject": "Your client portal at Smith & Co",
        "text": "Hello Jane,\nSet your password: https://portal.example/set\n",
        "html": '<p>Hello Jane,</p>\n<p><a href="https://portal.example/set">Set</a></p>\n',
        "message_id": "<invitation-1-send.abc@portal.example>",
        "date": DATE,
    }
    args.update(changes)
    return args


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content


def summary(raw: bytes) -> tuple[dict[str, str], list[tuple[str, str | None, str]], str, str]:
    """What a reader sees: the headers, each part's type, charset and content, both names."""
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    message = parse(raw)
    assert not message.defects
    assert sorted(message.keys()) == sorted(HEADERS)  # nothing injected, nothing lost
    headers = {k: str(message[k]) for k in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version")}
    parts = [(p.get_content_type(), p.get_content_charset(), p.get_content()) for p in message.iter_parts()]
    assert message.get_content_type() == "multipart/alternative"
    return headers, parts, message["To"].addresses[0].display_name, message["From"].addresses[0].display_name


# --- templates --------------------------------------------------------------------------------


def test_every_template_compiles_and_renders_without_leftover_markup() -> None:
    versions = compile_all()

    assert set(versions) == {"invitation", "reminder", "password_reset"}
    contexts: dict[str, dict[str, object]] = {
        "invitation": invitation_context(),
        "reminder": invitation_context(reminder_number=2),
        "password_reset": {
            "practice_name": "Smith & Co",
            "logo_url": "",
            "client_name": "Jane",
            "reset_url": "https://portal.example/p/7/reset?token=r1",
            "expires_at_text": "in 60 minutes, at 15:30 on 30 November 2026",
        },
    }
    for kind, context in contexts.items():
        rendered = render_email(kind, context)
        for body in (rendered.html, rendered.text):
            assert "{{" not in body and "{%" not in body and "{#" not in body
        assert "fonts.googleapis" not in rendered.html  # fonts={}: no tracking font download
        assert max(len(line) for line in rendered.html.splitlines()) < 998


def test_invitation_shows_practice_links_raw_urls_and_expiry() -> None:
    rendered = render_email("invitation", invitation_context(documents_waiting=True))

    assert rendered.subject == "Your client portal at Smith & Co Accountants"
    html = rendered.html
    assert "Smith &amp; Co Accountants" in html
    assert 'src="https://cdn.example/logo.png"' in html
    assert 'alt="Smith &amp; Co Accountants"' in html
    set_password = "https://portal.example/p/7/set-password?token=tok123&amp;x=1"
    assert html.count(f'href="{set_password}"') == 2  # the button and the raw link under it
    assert f">{set_password}</a>" in html
    assert html.count('href="https://portal.example/p/7/sign-in"') == 2
    assert ">https://portal.example/p/7/sign-in</a>" in html
    assert "Monday 14 December 2026" in html
    assert "Documents have been shared with you" in html
    assert "Set your password" in html and "Sign in" in html
    assert "You are receiving this email because" in html


def test_without_a_logo_the_practice_name_stands_in() -> None:
    html = render_email("invitation", invitation_context(logo_url="")).html

    assert "<img" not in html
    assert ">Smith &amp; Co Accountants</div>" in html


def test_staff_message_is_text_never_markup_or_template() -> None:
    message = "Hi Jane,\r\n<script>alert('x')</script>\n{{ 7*7 }} {% if true %}yes{% endif %}"

    rendered = render_email("invitation", invitation_context(custom_message=message))

    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in rendered.html
    assert "Hi Jane,<br>\n&lt;script&gt;" in rendered.html  # line breaks shown, safely
    assert "{{ 7*7 }} {% if true %}yes{% endif %}" in rendered.html
    assert "49" not in rendered.html
    # The plain-text twin shows exactly what was typed.
    assert "<script>alert('x')</script>" in rendered.text
    assert "{{ 7*7 }}" in rendered.text


def test_plain_text_twin_has_every_url_unescaped() -> None:
    text = render_email("invitation", invitation_context()).text

    assert "https://portal.example/p/7/set-password?token=tok123&x=1" in text
    assert "https://portal.example/p/7/sign-in" in text
    assert "https://portal.example/p/7" in text
    assert "Smith & Co Accountants" in text
    assert "Monday 14 December 2026" in text
    assert "Documents have been shared" not in text


def test_reminder_and_reset_say_what_they_are() -> None:
    reminder = render_email("reminder", invitation_context(reminder_number=3, logo_url=""))
    reset = render_email(
        "password_reset",
        {
            "practice_name": "Smith & Co",
            "logo_url": "",
            "client_name": "Jane",
            "reset_url": "https://portal.example/p/7/reset?token=r1",
            "expires_at_text": "in 60 minutes, at 15:30 on 30 November 2026",
        },
    )

    assert reminder.subject == "Reminder: your client portal at Smith & Co Accountants is waiting"
    assert "reminder 3" in reminder.text and "reminder 3" in reminder.html
    assert reset.subject == "Reset your password for Smith & Co"
    assert "https://portal.example/p/7/reset?token=r1" in reset.text
    assert reset.html.count('href="https://portal.example/p/7/reset?token=r1"') == 2
    assert "expires in 60 minutes, at 15:30 on 30 November 2026" in reset.text


def test_non_ascii_names_become_character_references_in_html_only() -> None:
    rendered = render_email("invitation", invitation_context(practice_name="Müller & Söhne", client_name="Zoë"))

    assert rendered.html.isascii()
    assert "Hello Zo&#235;," in rendered.html and "M&#252;ller &amp; S&#246;hne" in rendered.html
    assert "Hello Zoë," in rendered.text
    assert rendered.subject == "Your client portal at Müller & Söhne"


def test_subject_never_carries_a_line_break() -> None:
    rendered = render_email("invitation", invitation_context(practice_name="Evil\r\nBcc: all@example.com"))

    assert rendered.subject == "Your client portal at Evil Bcc: all@example.com"


@pytest.mark.parametrize(
    ("kind", "context"),
    [
        ("newsletter", invitation_context()),
        ("invitation", {k: v for k, v in invitation_context().items() if k != "expires_on"}),
        ("reminder", invitation_context()),  # no reminder_number
        ("invitation", invitation_context(documents_waiting="no")),
        ("reminder", invitation_context(reminder_number=True)),
        ("invitation", invitation_context(client_name=Markup("<b>Jane</b>"))),  # would skip escaping
        ("invitation", invitation_context(sign_in_url="javascript:alert(1)")),
    ],
)
def test_bad_kind_or_context_is_refused(kind: str, context: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        render_email(kind, context)


# --- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("jane@example.com", "jane@example.com"),
        ("  Jane.Doe+tax@Example.COM ", "Jane.Doe+tax@example.com"),
        ("o'brien@bücher.de", "o'brien@xn--bcher-kva.de"),
        ("a@sub.example.co.uk", "a@sub.example.co.uk"),
    ],
)
def test_valid_addresses_are_normalised(raw: str, normalised: str) -> None:
    assert validate_address(raw) == normalised


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "jane",
        "@example.com",
        "jane@",
        "jane@example",
        "jane@@example.com",
        "jane@doe@example.com",
        "jane doe@example.com",
        "jane@example.com\r\nBcc: all@example.com",
        "jane@example.com\n",
        "jané@example.com",
        ".jane@example.com",
        "jane..doe@example.com",
        "jane@-example.com",
        "jane@example..com",
        "<jane@example.com>",
        "x" * 250 + "@example.com",
    ],
)
def test_malformed_addresses_are_refused(raw: str) -> None:
    with pytest.raises(MalformedEmail):
        validate_address(raw)


def test_mailbox_accepts_what_formataddr_writes() -> None:
    assert parse_mailbox("no-reply@portal.example") == ("", "no-reply@portal.example")
    for name in ("Smith & Co", 'Smith, "Jones" \\ Co', "Müller & Söhne", "Evil\r\nBcc: x@example.com"):
        assert parse_mailbox(formataddr((name, "no-reply@portal.example"))) == (
            clean_header_text(name),
            "no-reply@portal.example",
        )
    with pytest.raises(MalformedEmail):
        parse_mailbox("Smith <no-reply@portal.example\r\n>")


def test_message_ids_are_deterministic() -> None:
    first = make_message_id("invitation-42-send", "Portal.Example")

    assert first == make_message_id("invitation-42-send", "portal.example")
    assert first != make_message_id("invitation-42-reminder-1", "portal.example")
    assert first.startswith("<invitation-42-send.") and first.endswith("@portal.example>")


# --- messages ---------------------------------------------------------------------------------


def test_message_round_trips_through_the_parser() -> None:
    raw = build_message(**message_args())

    message = parse(raw)
    assert message["From"].addresses[0].display_name == "Smith & Co"
    assert message["From"].addresses[0].addr_spec == "no-reply@portal.example"
    assert str(message["To"]) == "Jane Doe <jane@example.com>"
    assert str(message["Subject"]) == "Your client portal at Smith & Co"
    assert message["Message-ID"] == "<invitation-1-send.abc@portal.example>"
    assert message["Date"].datetime == DATE
    assert message["MIME-Version"] == "1.0"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"  # text first, so HTML is preferred
    assert html.get_content_type() == "text/html"
    assert text.get_content() == "Hello Jane,\r\nSet your password: https://portal.example/set\r\n"
    assert 'href="https://portal.example/set"' in html.get_content()
    assert raw == build_message(**message_args())  # deterministic: a retry sends the same bytes


@pytest.mark.parametrize("field", ["subject", "to_name"])
def test_line_breaks_cannot_inject_a_header(field: str) -> None:
    raw = build_message(**message_args(**{field: "Hello\r\nBcc: everyone@example.com\n\nbody"}))

    message = parse(raw)
    assert message["Bcc"] is None
    assert sorted(message.keys()) == sorted(HEADERS)
    header = str(message["Subject"]) if field == "subject" else message["To"].addresses[0].display_name
    assert header == "Hello Bcc: everyone@example.com body"


def test_addresses_and_ids_with_line_breaks_are_refused() -> None:
    with pytest.raises(MalformedEmail):
        build_message(**message_args(to_addr="jane@example.com\r\nBcc: x@example.com"))
    with pytest.raises(MalformedEmail):
        build_message(**message_args(from_addr="no-reply@portal.example\n"))
    with pytest.raises(InvalidInput):
        build_message(**message_args(message_id="<a@b>\r\nBcc: x@example.com"))
    with pytest.raises(InvalidInput):
        build_message(**message_args(message_id="no-brackets@portal.example"))
    with pytest.raises(InvalidInput):
        build_message(**message_args(date=datetime(2026, 11, 30, 15, 30)))


def test_non_ascii_names_and_subjects_are_encoded() -> None:
    raw = build_message(
        **message_args(
            from_addr=formataddr(("Müller & Söhne", "no-reply@portal.example")),
            to_name="Zoë Ødegård",
            subject="Ihr Kundenportal bei Müller & Söhne Steuerberatung, Dresden-Neustadt",
            html="<p>Grüße, Zoë</p>",
        )
    )

    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii() and b"=?utf-8?b?" in head
    message = parse(raw)
    assert message["To"].addresses[0].display_name == "Zoë Ødegård"
    assert message["From"].addresses[0].display_name == "Müller & Söhne"
    assert str(message["Subject"]) == "Ihr Kundenportal bei Müller & Söhne Steuerberatung, Dresden-Neustadt"
    assert raw.isascii()  # 7-bit all through: no relay needs 8BITMIME
    assert body(message, "html") == "<p>Grüße, Zoë</p>\r\n"


def test_a_long_url_keeps_lines_short_and_arrives_intact() -> None:
    rendered = render_email("invitation", invitation_context(set_password_url=LONG_URL))

    raw = build_message(**message_args(subject=rendered.subject, text=rendered.text, html=rendered.html))

    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    message = parse(raw)
    assert LONG_URL in body(message, "plain")
    assert f'href="{LONG_URL}"' in body(message, "html")


@pytest.mark.parametrize("offset", [0, 2, 498, 499, 500, 501, 999, 1500])
@pytest.mark.parametrize(("length", "raw_7bit"), [(998, True), (999, False), (2000, False)])
def test_a_line_over_998_octets_is_encoded_wherever_it_falls(offset: int, length: int, raw_7bit: bool) -> None:
    # The line check looks at 500-octet windows first: a long line must be caught whatever its
    # position relative to them.
    lines = -(-offset // 900)  # short lines before it, offset octets in all (CRLF counted)
    sizes = [offset // lines + (i < offset % lines) for i in range(lines)] if offset else []
    html = "".join("a" * (size - 2) + "\n" for size in sizes) + "x" * length + "\nend\n"

    raw = build_message(**message_args(text="short", html=html))

    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert raw.count(b"Content-Transfer-Encoding: 7bit") == (2 if raw_7bit else 1)
    assert body(parse(raw), "html") == html.replace("\n", "\r\n")


def test_rendered_ascii_email_goes_as_readable_7bit() -> None:
    rendered = render_email("invitation", invitation_context())

    raw = build_message(**message_args(subject=rendered.subject, text=rendered.text, html=rendered.html))

    assert raw.count(b"Content-Transfer-Encoding: 7bit") == 2
    assert b"https://portal.example/p/7/set-password?token=tok123&amp;x=1" in raw


_text = st.text(st.characters(codec="utf-8"), max_size=200)
_long_lines = st.builds(lambda a, n, b: a + "x" * n + b, _text, st.integers(min_value=0, max_value=2500), _text)
# What a person (or an attacker) might type into a name or subject.
_header_text = st.one_of(
    _text,
    st.text(st.sampled_from('ab Zoë😀"\\(),.:;<>@=?_\r\n\t\x00\x85\u2028'), max_size=120),
    st.builds(lambda a, b: f"{a}\r\nBcc: all@example.com\r\n\r\n{b}", _text, _text),
    st.builds(lambda a: f"=?utf-8?q?{a}?=", _text),
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    to_name=_header_text,
    subject=_header_text,
    text=st.one_of(_text, _long_lines),
    html=st.one_of(_text, _long_lines),
    from_name=st.text(st.characters(codec="utf-8", exclude_characters='<>"\\\r\n'), max_size=60),
)
def test_fast_builder_matches_the_stdlib_builder(
    to_name: str, subject: str, text: str, html: str, from_name: str
) -> None:
    args = message_args(
        from_addr=f'"{from_name}" <no-reply@portal.example>',
        to_name=to_name,
        subject=subject,
        text=text,
        html=html,
    )

    fast = summary(build_message(**args))
    reference = summary(build_message_reference(**args))

    # The fast bytes always read back as what was meant.
    intended = (clean_header_text(subject), clean_header_text(to_name)[:100].rstrip(" "), clean_header_text(from_name))
    assert (fast[0]["Subject"], fast[2], fast[3]) == intended
    # And exactly as the stdlib's do, wherever CPython 3.11's own round trip is right. It is not
    # for a literal "=?…?=" (sent unencoded, so read back decoded), a non-ASCII display name
    # over 45 bytes (split into encoded words that its parser rejoins with a space), and some
    # subjects mixing ASCII and encoded words (a space between them lost in folding).
    if (reference[0]["Subject"], reference[2], reference[3]) == intended:
        assert fast == reference


# --- delivery: folder -------------------------------------------------------------------------


def test_file_transport_writes_a_parseable_eml_atomically(tmp_path: Path) -> None:
    folder = tmp_path / "outbox" / "nested"
    transport = FileTransport(folder)
    raw = build_message(**message_args())

    transport.send(from_addr="no-reply@portal.example", to_addr="jane@example.com", message=raw, message_id="<a/b@c>")
    transport.send(from_addr="no-reply@portal.example", to_addr="jane@example.com", message=raw, message_id="<a/b@c>")

    files = list(folder.iterdir())
    assert [f.name for f in files] == ["a_b@c.eml"]  # same id twice: one file, no temp files left
    assert files[0].read_bytes() == raw
    assert str(parse(files[0].read_bytes())["Subject"]) == "Your client portal at Smith & Co"


def test_open_transport_follows_mail_url(tmp_path: Path) -> None:
    outbox = open_transport(Settings(mail_url=f"file://{tmp_path}/out"))
    assert isinstance(outbox, FileTransport) and outbox.folder == tmp_path / "out"
    for url, port in (("smtp://mx.example", 25), ("smtp+starttls://u:p@mx.example", 587), ("smtps://mx.example", 465)):
        smtp = open_transport(Settings(mail_url=url, smtp_timeout_s=7))
        assert isinstance(smtp, SmtpTransport) and smtp.port == port and smtp.timeout_s == 7
    assert "p@" not in repr(open_transport(Settings(mail_url="smtp+starttls://u:secret@mx.example")))


# --- delivery: SMTP ---------------------------------------------------------------------------


@pytest.fixture
def mail_sink() -> Iterator[tuple[RecordingSink, int]]:
    handler = RecordingSink()
    with run_smtp(handler) as port:
        yield handler, port


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _send(transport: SmtpTransport, to_addr: str = "jane@example.com", n: int = 1) -> bytes:
    raw = build_message(**message_args(to_addr=to_addr, message_id=f"<m{n}@portal.example>"))
    transport.send(from_addr="no-reply@portal.example", to_addr=to_addr, message=raw, message_id=f"<m{n}@x>")
    return raw


def test_smtp_delivers_and_reuses_one_connection(mail_sink: tuple[RecordingSink, int]) -> None:
    sink, port = mail_sink
    transport = SmtpTransport(f"smtp://127.0.0.1:{port}", timeout_s=5)
    try:
        sent = [_send(transport, n=n) for n in range(4)]
    finally:
        transport.close()

    assert [raw for _, raw in sink.received] == sent
    assert len(set(sink.peers())) == 1


def test_smtp_recycles_checks_idle_and_survives_a_dropped_connection(mail_sink: tuple[RecordingSink, int]) -> None:
    sink, port = mail_sink
    transport = SmtpTransport(f"smtp://127.0.0.1:{port}", timeout_s=5)
    transport.max_messages_per_connection = 3
    try:
        for n in range(3):  # connection A carries three, then is recycled
            _send(transport, n=n)
        transport.idle_check_s = 0.0  # every reuse now starts with NOOP
        _send(transport, n=3)  # B
        _send(transport, n=4)  # B again, after a NOOP
        transport._local.session.smtp.sock.shutdown(socket.SHUT_RDWR)
        _send(transport, n=5)  # the NOOP fails: C
        transport.idle_check_s = 30.0
        transport._local.session.smtp.sock.shutdown(socket.SHUT_RDWR)
        _send(transport, n=6)  # no NOOP; the send finds it dead and reconnects once: D
    finally:
        transport.close()

    a, a2, a3, b, b2, c, d = sink.peers()
    assert a == a2 == a3 and b == b2
    assert len({a, b, c, d}) == 4


def test_smtp_connections_are_per_thread(mail_sink: tuple[RecordingSink, int]) -> None:
    sink, port = mail_sink
    transport = SmtpTransport(f"smtp://127.0.0.1:{port}", timeout_s=5)
    threads = [
        threading.Thread(target=lambda i=i: [_send(transport, n=10 * i + k) for k in range(2)]) for i in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(sink.received) == 4 and len(set(sink.peers())) == 2
    transport.close()
    assert not transport._sessions


@pytest.mark.parametrize(
    ("reply", "error", "code"),
    [
        ("451 4.3.0 try later", TransientDeliveryError, 451),
        ("421 4.3.2 closing, come back later", TransientDeliveryError, 421),  # smtplib hangs up
        ("550 5.1.1 no such user", PermanentDeliveryError, 550),
    ],
)
def test_smtp_replies_are_classified(
    mail_sink: tuple[RecordingSink, int], reply: str, error: type[Exception], code: int
) -> None:
    sink, port = mail_sink
    transport = SmtpTransport(f"smtp://127.0.0.1:{port}", timeout_s=5)
    sink.data_reply = reply
    try:
        with pytest.raises(error) as caught:
            _send(transport)
        sink.data_reply = None
        _send(transport, n=2)  # a refusal leaves the connection usable
    finally:
        transport.close()

    assert caught.value.smtp_code == code  # type: ignore[attr-defined]
    assert len(sink.received) == 1


def test_refused_recipient_is_permanent(mail_sink: tuple[RecordingSink, int]) -> None:
    sink, port = mail_sink
    transport = SmtpTransport(f"smtp://127.0.0.1:{port}", timeout_s=5)
    try:
        with pytest.raises(PermanentDeliveryError) as caught:
            _send(transport, to_addr="nobody@example.com")
    finally:
        transport.close()

    assert caught.value.smtp_code == 550
    assert "no such user" in str(caught.value)
    assert sink.received == []


def test_a_server_that_never_answers_times_out_as_transient() -> None:
    with socket.socket() as silent:  # the kernel accepts the connection; nobody ever speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        transport = SmtpTransport(f"smtp://127.0.0.1:{silent.getsockname()[1]}", timeout_s=1)
        started = time.monotonic()
        with pytest.raises(TransientDeliveryError) as caught:
            _send(transport)

    assert time.monotonic() - started < 3
    assert caught.value.smtp_code is None


def test_connection_refused_is_transient() -> None:
    transport = SmtpTransport(f"smtp://127.0.0.1:{free_port()}", timeout_s=1)

    with pytest.raises(TransientDeliveryError):
        _send(transport)


def test_starttls_is_required_never_skipped(mail_sink: tuple[RecordingSink, int]) -> None:
    sink, port = mail_sink  # this server does not offer STARTTLS
    transport = SmtpTransport(f"smtp+starttls://127.0.0.1:{port}", timeout_s=5)

    with pytest.raises(PermanentDeliveryError, match="STARTTLS"):
        _send(transport)

    assert sink.received == []


def test_starttls_verifies_the_certificate_and_logs_in_without_leaking_the_password(
    certificate: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret!")

    sink, port = RecordingSink(), free_port()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticator,
    )
    controller.start()
    caplog.set_level(logging.DEBUG)
    try:
        url = f"smtp+starttls://jane%40ops:s3cret%21@127.0.0.1:{port}"
        unverified = SmtpTransport(url, timeout_s=5)  # system CAs do not know our certificate
        with pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            _send(unverified)
        trusting = SmtpTransport(url, timeout_s=5, tls_context=ssl.create_default_context(cafile=str(cert)))
        _send(trusting)
        trusting.close()
    finally:
        controller.stop()

    assert logins == [(b"jane@ops", b"s3cret!")]
    assert len(sink.received) == 1
    assert "s3cret" not in caplog.text and "s3cret" not in repr(trusting)


def test_smtps_verifies_the_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    sink, port = RecordingSink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, ssl_context=server_tls)
    controller.start()
    try:
        with pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            _send(SmtpTransport(f"smtps://127.0.0.1:{port}", timeout_s=5))
        trusting = SmtpTransport(
            f"smtps://127.0.0.1:{port}", timeout_s=5, tls_context=ssl.create_default_context(cafile=str(cert))
        )
        _send(trusting)
        trusting.close()
    finally:
        controller.stop()

    assert len(sink.received) == 1


def test_date_keeps_its_zone_and_means_the_same_instant() -> None:
    raw = build_message(**message_args(date=datetime(2026, 6, 1, 9, tzinfo=timezone(timedelta(hours=2)))))
    assert parse(raw)["Date"].datetime == datetime(2026, 6, 1, 7, tzinfo=UTC)
