"""Email templates: MJML compiled once per process, Jinja2 rendered per recipient.

MJML layout is computed at compile time, so each ``templates/<kind>.mjml`` goes through
mjml-python once (no web fonts, no comments) and the resulting HTML becomes a Jinja template
with autoescape on. The ``<kind>.txt`` twin is rendered with autoescape off. Both use
``StrictUndefined`` and the context is checked against the kind's variables first, so a
missing or misspelt variable fails loudly instead of leaving a hole in a client's email.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mjml
from jinja2 import Environment, StrictUndefined, Template, TemplateError
from markupsafe import Markup, escape

from engine.core.errors import InvalidInput
from engine.mail.message import clean_header_text

__all__ = ["KINDS", "TEMPLATES_DIR", "RenderedEmail", "compile_all", "render_email"]

#: Where ``<kind>.mjml`` and ``<kind>.txt`` live (the repository's ``templates/``).
TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"

_INVITE_VARS: dict[str, type] = {
    "practice_name": str,
    "logo_url": str,
    "client_name": str,
    "sign_in_url": str,
    "set_password_url": str,
    "expires_on": str,
    "custom_message": str,
    "documents_waiting": bool,
    "portal_url": str,
}

#: Each kind's context variables and their types (all required).
KINDS: dict[str, dict[str, type]] = {
    "invitation": _INVITE_VARS,
    "reminder": {**_INVITE_VARS, "reminder_number": int},
    "password_reset": {
        "practice_name": str,
        "logo_url": str,
        "client_name": str,
        "reset_url": str,
        "expires_at_text": str,
    },
}

# Subjects are code, not templates: they are one line, and str.format cannot run anything.
_SUBJECTS: dict[str, str] = {
    "invitation": "Your client portal at {practice_name}",
    "reminder": "Reminder: your client portal at {practice_name} is waiting",
    "password_reset": "Reset your password for {practice_name}",
}

# MRML writes whole tables on one line, thousands of characters long; a line over 998 octets
# forces the HTML part into base64. A line break in place of the space between two attributes
# means the same to every HTML parser, so each tag is broken there once, at compile time.
_TAG = re.compile(r"<[a-zA-Z][^<>]*>")
_ATTRIBUTE_GAP = re.compile(r'" (?=[a-zA-Z][a-zA-Z0-9:_-]*=")')

# URLs that are optional may be empty; every other *_url must be an absolute http(s) link.
_OPTIONAL_URLS = frozenset({"logo_url"})


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """One recipient's email: a one-line subject, the HTML body and its plain-text twin."""

    subject: str
    html: str
    text: str


@dataclass(frozen=True, slots=True)
class _Compiled:
    version: str
    html: Template
    text: Template


def _nl2br(value: object) -> Markup:
    """Staff-typed text shown with its line breaks: escaped first, then ``<br>`` between lines."""
    lines = str(value).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return Markup("<br>\n").join(escape(line) for line in lines)


def _short_lines(html: str) -> str:
    """``html`` with a line break between the attributes of each tag (no meaning changes)."""
    return _TAG.sub(lambda tag: _ATTRIBUTE_GAP.sub('"\n', tag[0]), html)


def _environment(*, autoescape: bool) -> Environment:
    env = Environment(
        autoescape=autoescape,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        # The .txt twins use {% if %} on lines of their own; these keep those lines out.
        trim_blocks=True,
        lstrip_blocks=not autoescape,
    )
    env.filters["nl2br"] = _nl2br
    return env


_HTML_ENV = _environment(autoescape=True)
_TEXT_ENV = _environment(autoescape=False)
_lock = threading.Lock()
_by_version: dict[tuple[str, str], _Compiled] = {}
_current: dict[str, _Compiled] = {}


def _compile(kind: str) -> _Compiled:
    """Compile ``kind`` from disk, reusing the cached result while the files are unchanged."""
    try:
        mjml_source = (TEMPLATES_DIR / f"{kind}.mjml").read_text(encoding="utf-8")
        text_source = (TEMPLATES_DIR / f"{kind}.txt").read_text(encoding="utf-8")
    except OSError as exc:
        raise RuntimeError(f"email template {kind!r} is missing: {exc}") from exc
    digest = hashlib.sha256(f"{mjml_source}\0{text_source}".encode()).hexdigest()[:16]
    key = (kind, digest)
    compiled = _by_version.get(key)
    if compiled is None:
        try:
            html = mjml.mjml2html(mjml_source, fonts={}, disable_comments=True)
        except ValueError as exc:  # mjml-python reports every MJML problem as ValueError
            raise RuntimeError(f"templates/{kind}.mjml does not compile: {exc}") from exc
        try:
            compiled = _Compiled(digest, _HTML_ENV.from_string(_short_lines(html)), _TEXT_ENV.from_string(text_source))
        except TemplateError as exc:
            raise RuntimeError(f"email template {kind!r} is not valid Jinja: {exc}") from exc
        _by_version[key] = compiled
    return compiled


def compile_all() -> dict[str, str]:
    """Compile every template now (worker start, CI) and return each kind's version hash.

    Raises ``RuntimeError`` naming the template on the first one that is missing or broken.
    Calling it again picks up templates changed on disk since the last call.
    """
    versions: dict[str, str] = {}
    with _lock:
        for kind in KINDS:
            _current[kind] = compiled = _compile(kind)
            versions[kind] = compiled.version
    return versions


def _templates(kind: str) -> _Compiled:
    compiled = _current.get(kind)
    if compiled is None:
        with _lock:
            compiled = _current.get(kind)
            if compiled is None:
                _current[kind] = compiled = _compile(kind)
    return compiled


def _check_context(kind: str, context: Mapping[str, object]) -> None:
    spec = KINDS[kind]
    # Extra keys are allowed (one context can serve the invitation and its reminders);
    # a missing one would only surface, with StrictUndefined, inside a branch that renders it.
    missing = spec.keys() - context.keys()
    if missing:
        raise InvalidInput(f"missing variables for the {kind} email", missing=sorted(missing))
    for name, expected in spec.items():
        value = context[name]
        # Exact types: a bool is an int (True as reminder_number is a bug), and a str subclass
        # such as markupsafe.Markup would skip autoescaping.
        if type(value) is not expected:
            raise InvalidInput(f"{name} must be {expected.__name__}", variable=name)
        if name.endswith("_url") and not (value == "" and name in _OPTIONAL_URLS):
            if not str(value).startswith(("https://", "http://")):
                raise InvalidInput(f"{name} must be an http(s) URL", variable=name)


def render_email(kind: str, context: Mapping[str, object]) -> RenderedEmail:
    """Render the ``kind`` email ("invitation", "reminder", "password_reset") for one recipient.

    ``context`` must hold the kind's variables with their exact types (see ``KINDS``), else
    ``InvalidInput``; other keys are ignored. An unknown kind is ``InvalidInput`` too.
    Values are data, never template code: a ``{{ 7*7 }}`` or ``<script>`` typed by staff
    comes out literally (escaped in the HTML). The HTML is pure ASCII: other characters are
    written as character references (``&#235;``); the text keeps them as they are.
    """
    if kind not in KINDS:
        raise InvalidInput(f"unknown email kind {kind!r}", kind=kind)
    _check_context(kind, context)
    compiled = _templates(kind)
    practice = clean_header_text(str(context["practice_name"]))
    subject = clean_header_text(_SUBJECTS[kind].format(practice_name=practice))
    html = _render(compiled.html, context)
    if not html.isascii():
        # Character references mean the same to every HTML reader and keep the part 7-bit
        # and readable: build_message can then send it as it is instead of in base64.
        html = html.encode("ascii", "xmlcharrefreplace").decode("ascii")
    return RenderedEmail(subject=subject, html=html, text=_render(compiled.text, context))


def _render(template: Template, context: Mapping[str, object]) -> str:
    """``template.render(context)`` without merging Jinja's globals (``range``, ``lipsum``…)
    into a new dict for every recipient: that merge was a third of the cost of an email
    (bench/RESULTS.md). The templates use their variables and filters only; anything else
    is still undefined, and StrictUndefined still fails on it."""
    return template.environment.concat(  # type: ignore[attr-defined]
        template.root_render_func(template.new_context(dict(context), shared=True))
    )
