"""The email pipeline: templates rendered, messages built, delivered over SMTP or to a folder."""

from __future__ import annotations

# Building messages
from engine.mail.message import (
    build_message,
    build_message_reference,
    clean_header_text,
    make_message_id,
    parse_mailbox,
    validate_address,
)

# Rendering templates
from engine.mail.render import RenderedEmail, compile_all, render_email

# Delivering
from engine.mail.transport import FileTransport, SmtpTransport, Transport, open_transport

__all__ = [
    # Rendering templates
    "RenderedEmail",
    "compile_all",
    "render_email",
    # Building messages
    "build_message",
    "build_message_reference",
    "clean_header_text",
    "make_message_id",
    "parse_mailbox",
    "validate_address",
    # Delivering
    "FileTransport",
    "SmtpTransport",
    "Transport",
    "open_transport",
]
