"""Email messages as bytes: addresses checked, headers safe from injection, any line length.

``build_message`` assembles the RFC 5322 bytes directly, because the stdlib ``EmailMessage``
path costs about 2.5 ms per message and a worker builds one per recipient. ``build_message_reference``
is that stdlib path, kept as the obviously correct yardstick: the tests prove with many random
inputs that both parse back to the same headers and parts.

Both paths clean person-typed text (display names, subjects) the same way first: every run of
whitespace or control characters becomes one space. CPython 3.11.7 still lets a trailing newline
into a header (CVE-2024-6923), so nothing that reaches a header may contain CR or LF.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from datetime import datetime
from email import policy as email_policy
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache

from engine.core.errors import InvalidInput, MalformedEmail

__all__ = [
    "build_message",
    "build_message_reference",
    "clean_header_text",
    "make_message_id",
    "parse_mailbox",
    "validate_address",
]

# RFC 5322 dot-atom local part; quoted local parts are refused on purpose (strict and simple).
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A display name that can go out as a bare phrase: atoms separated by single spaces.
_PLAIN_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,400}@[!-;=?-~]{1,400}>")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# SMTP policy, but every body and header must be 7-bit: not every relay speaks 8BITMIME.
_POLICY = email_policy.SMTP.clone(cte_type="7bit")
_CRLF = "\r\n"
_MAX_HEADER_LINE = 78  # RFC 5322 "SHOULD"; 998 is the hard limit that nothing here exceeds
_MAX_LINE = 998
# RFC 2047 caps an encoded word at 75 characters: 39 UTF-8 bytes make 52 base64 characters,
# 64 with the "=?utf-8?b?…?=" frame, so "Subject: " plus one word stays within 78.
_WORD_BYTES = 39
# Display names are cosmetic: longer ones are cut, so a header line never nears 998 octets.
_MAX_NAME = 100


def validate_address(addr: str) -> str:
    """Return ``addr`` normalised (spaces stripped, domain lowercased and IDNA-encoded).

    Strict on purpose: a dot-atom local part, one ``@``, a dotted domain, at most 254
    characters. Anything else, including CR or LF anywhere, raises ``MalformedEmail``.
    """
    if not isinstance(addr, str):
        raise MalformedEmail("an email address must be text")
    return _normalise_address(addr)


@lru_cache(maxsize=4096)  # the same sender and recipients come back with every message
def _normalise_address(addr: str) -> str:
    if "\r" in addr or "\n" in addr:
        raise MalformedEmail("an email address cannot contain a line break")
    value = addr.strip(" \t")
    if value.count("@") != 1:
        raise MalformedEmail("an email address needs exactly one @", address=value[:254])
    local, _, domain = value.partition("@")
    if not local:
        raise MalformedEmail("an email address needs something before the @", address=value)
    if len(local) > 64 or not _LOCAL_PART.fullmatch(local):
        raise MalformedEmail("the part before the @ has characters we cannot send to", address=value)
    try:
        ascii_domain = domain.lower().encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise MalformedEmail("the domain is not a valid name", address=value) from exc
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise MalformedEmail("the domain is not a valid name", address=value)
    result = f"{local}@{ascii_domain}"
    if len(result) > 254:
        raise MalformedEmail("an email address has at most 254 characters", address=value[:254])
    return result


def clean_header_text(value: str) -> str:
    """Person-typed text made fit for one header line: whitespace and control runs become a space."""
    if not isinstance(value, str):
        raise InvalidInput("header text must be a string")
    return " ".join(_CONTROLS.sub(" ", value).split())


def parse_mailbox(value: str) -> tuple[str, str]:
    """Split ``"Name <addr>"`` or a bare address into (clean display name, valid address).

    The name may be quoted or RFC 2047 encoded (as ``email.utils.formataddr`` writes it);
    CR/LF in the name is cleaned away, in the address it is ``MalformedEmail``.
    """
    if not isinstance(value, str):
        raise MalformedEmail("a mailbox must be text")
    return _parse_mailbox(value)


@lru_cache(maxsize=1024)  # the sender is the same for a whole practice's mail
def _parse_mailbox(value: str) -> tuple[str, str]:
    text = value.strip(" \t")
    if not (text.endswith(">") and "<" in text):
        return "", validate_address(text)
    cut = text.rindex("<")
    name = text[:cut].strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1], flags=re.S)
    elif "=?" in name:
        try:
            name = str(make_header(decode_header(name)))
        except (ValueError, LookupError) as exc:  # a broken encoded word or unknown charset
            raise InvalidInput("the display name is not readable", name=name) from exc
    return clean_header_text(name), validate_address(text[cut + 1 : -1])


def make_message_id(key: str, domain: str) -> str:
    """A deterministic ``Message-ID`` for ``key`` (e.g. "invitation-42-send-3"), so retries reuse it."""
    readable = _ID_UNSAFE.sub("-", key).strip("-.")[:64]
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    host = validate_address(f"x@{domain}").partition("@")[2]
    return f"<{readable}.{digest}@{host}>"


def _check_common(
    from_addr: str, to_addr: str, to_name: str, subject: str, message_id: str, date: datetime
) -> tuple[str, str, str, str, str, str]:
    """Validate and clean the inputs both builders share; return the cleaned values."""
    from_name, from_email = parse_mailbox(from_addr)
    to_email = validate_address(to_addr)
    if not isinstance(message_id, str) or not _MESSAGE_ID.fullmatch(message_id):
        raise InvalidInput("message_id must look like <left@right> in printable ASCII")
    if not isinstance(date, datetime) or date.tzinfo is None or date.utcoffset() is None:
        raise InvalidInput("date must be an aware datetime")
    to_name = clean_header_text(to_name)[:_MAX_NAME].rstrip(" ")
    from_name = from_name[:_MAX_NAME].rstrip(" ")
    return from_name, from_email, to_name, to_email, clean_header_text(subject), message_id


def _encode_text(value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput("text is not valid Unicode (lone surrogate)") from exc


def build_message_reference(
    *,
    from_addr: str,
    to_addr: str,
    to_name: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    date: datetime,
) -> bytes:
    """The same message as ``build_message``, built with ``EmailMessage`` (slow; the yardstick)."""
    from_name, from_email, name, to_email, subject, message_id = _check_common(
        from_addr, to_addr, to_name, subject, message_id, date
    )
    _encode_text(text + html + name + subject + from_name)
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = Address(display_name=from_name, addr_spec=from_email)
    msg["To"] = Address(display_name=name, addr_spec=to_email)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def _encoded_words(value: str) -> list[str]:
    """RFC 2047 base64 words, each ≤ 75 characters, never splitting a character."""
    words: list[str] = []
    chunk = bytearray()
    for char in value:
        raw = char.encode("utf-8")
        if len(chunk) + len(raw) > _WORD_BYTES:
            words.append(f"=?utf-8?b?{binascii.b2a_base64(chunk, newline=False).decode()}?=")
            chunk.clear()
        chunk += raw
    if chunk:
        words.append(f"=?utf-8?b?{binascii.b2a_base64(chunk, newline=False).decode()}?=")
    return words


def _fold_words(name: str, words: list[str]) -> str:
    """``Name: w1 w2 …`` with a fold before any word that would pass 78 characters."""
    words = words or [""]
    lines = [f"{name}: {words[0]}"]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) > _MAX_HEADER_LINE:
            lines.append(f" {word}")  # the fold's space stands for the space between words
        else:
            lines[-1] += f" {word}"
    return _CRLF.join(lines)


@lru_cache(maxsize=1024)  # one subject per practice and kind, sent to many clients
def _unstructured(name: str, value: str) -> str:
    """A header line for free text (Subject): plain ASCII folded at spaces, else encoded words."""
    if value.isascii() and "=?" not in value and len(value) < 900:
        # Words are at most 900 characters, so even an unfoldable line stays under 998.
        if len(name) + 2 + len(value) <= _MAX_HEADER_LINE:
            return f"{name}: {value}"
        return _fold_words(name, value.split(" "))
    # An ASCII "=?…?=" is encoded too: sent raw, a reader would decode it into something else.
    return _fold_words(name, _encoded_words(value))


def _mailbox(name: str, display_name: str, address: str) -> str:
    """A header line for one mailbox, the display name quoted or encoded as needed."""
    if not display_name:
        return f"{name}: {address}"
    if display_name.isascii() and "=?" not in display_name:
        if _PLAIN_PHRASE.fullmatch(display_name):
            phrase = display_name
        else:
            phrase = '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        # One encoded word, even past RFC 2047's 75 characters for names over 45 bytes:
        # CPython's parser turns the fold between two encoded words of a display name into
        # a space (real mail clients do not), and lenient decoders everywhere read long words.
        # _MAX_NAME keeps the line far below 998 octets.
        phrase = f"=?utf-8?b?{binascii.b2a_base64(display_name.encode(), newline=False).decode()}?="
    line = f"{name}: {phrase}"
    sep = " " if len(line) + 3 + len(address) <= _MAX_HEADER_LINE else f"{_CRLF} "
    return f"{line}{sep}<{address}>"


@lru_cache(maxsize=64)
def _date_header(date: datetime) -> str:
    # A batch's messages share their date (its "now"): format_datetime took 3 % of a worker's CPU.
    return format_datetime(date)


def _lines_within_limit(data: bytes) -> bool:
    """Whether every line of ``data`` (CRLF line ends) is within 998 octets.

    A line of 999 octets or more covers a whole 500-octet window at some multiple of 500, so
    when each such window holds a line feed (``find`` is a memchr: 2 us for 13 kB) no line is
    too long. Only otherwise are the lines measured (the split took 16 us, 3 % of a worker).
    """
    window = (_MAX_LINE + 2) // 2  # 2 * window - 1 == _MAX_LINE + 1
    if all(data.find(b"\n", start, start + window) >= 0 for start in range(0, len(data) - window + 1, window)):
        return True
    return max(map(len, data.split(b"\r\n"))) <= _MAX_LINE


def _body(subtype: str, content: str) -> tuple[bytes, bool]:
    """One MIME part (headers and body); the flag says whether the body went out as raw 7-bit.

    Line ends become CRLF and a final one is added, as ``EmailMessage.set_content`` does.
    ASCII with every line within 998 octets goes as it is (the compiled templates keep their
    lines short for this). Otherwise plain text is quoted-printable, which stays readable, and
    HTML is base64: binascii does it in one C call, where quoted-printable of a 15 kB HTML
    full of ``=`` costs over 100 µs.
    """
    if "\r" in content:
        content = content.replace("\r\n", "\n").replace("\r", "\n")
    if not content.endswith("\n"):
        content += "\n"
    data = _encode_text(content.replace("\n", _CRLF))
    if data.isascii() and _lines_within_limit(data):
        cte, body, raw = "7bit", data, True
    elif subtype == "plain":
        # b2a_qp keeps CRLF line ends (it sees them first), breaks lines at 76 with "=",
        # and encodes "=", trailing blanks and a leading "." so nothing can be misread.
        cte, body, raw = "quoted-printable", binascii.b2a_qp(data, istext=True), False
    else:
        encoded = binascii.b2a_base64(data, newline=False)
        lines = [encoded[i : i + 76] for i in range(0, len(encoded), 76)]
        cte, body, raw = "base64", b"\r\n".join(lines) + b"\r\n", False
    head = f'Content-Type: text/{subtype}; charset="utf-8"{_CRLF}Content-Transfer-Encoding: {cte}{_CRLF}{_CRLF}'
    return head.encode("ascii") + body, raw


def build_message(
    *,
    from_addr: str,
    to_addr: str,
    to_name: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    date: datetime,
) -> bytes:
    """A complete RFC 5322 message: multipart/alternative, plain text first, then HTML.

    ``from_addr`` is a bare address or ``"Name <addr>"``. Addresses are validated
    (``MalformedEmail``, also for CR/LF); display names and the subject are cleaned with
    ``clean_header_text``; ``message_id`` must be ``<left@right>`` and ``date`` aware
    (``InvalidInput``). Non-ASCII names and subjects are RFC 2047 encoded; a body goes as
    7-bit when it is ASCII with short lines, else the text as quoted-printable and the HTML as
    base64, so the message is 7-bit clean and no line exceeds 998 octets whatever the URLs.
    The output is deterministic: the MIME boundary derives from ``message_id``.
    """
    from_name, from_email, name, to_email, subject, message_id = _check_common(
        from_addr, to_addr, to_name, subject, message_id, date
    )
    text_part, text_raw = _body("plain", text)
    html_part, html_raw = _body("html", html)
    digest = hashlib.sha256(message_id.encode("ascii")).hexdigest()
    # "===" never occurs in quoted-printable or base64 output; raw 7-bit parts are checked.
    boundary = f"==============={digest[:24]}=="
    salt = 0
    while (text_raw and boundary.encode() in text_part) or (html_raw and boundary.encode() in html_part):
        salt += 1
        boundary = f"==============={digest[:24]}.{salt}=="
    head = _CRLF.join(
        (
            _mailbox("From", from_name, from_email),
            _mailbox("To", name, to_email),
            _unstructured("Subject", subject),
            f"Date: {_date_header(date)}",
            f"Message-ID: {message_id}",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative;{_CRLF} boundary="{boundary}"',
            "",
            f"--{boundary}",
            "",
        )
    ).encode("ascii")
    delimiter = f"{_CRLF}--{boundary}{_CRLF}".encode("ascii")
    # The CRLF before each delimiter belongs to the delimiter, hence the extra one per part.
    return b"".join((head, text_part, delimiter, html_part, f"{_CRLF}--{boundary}--{_CRLF}".encode("ascii")))
