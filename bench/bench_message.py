"""Target 5: the complete RFC 5322 message bytes (headers, text and HTML parts) against the
Jinja render of the compiled HTML, measured side by side in one run.

``build_message`` is the fast path the worker uses; ``build_message_reference`` is the
standard library's ``EmailMessage`` path, shown as the yardstick it replaced. Their output is
proved equivalent (headers, parts, line lengths, injection) by tests/test_mail.py.

    .venv/bin/python -m bench.bench_message [--repeat 3] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from bench import common
from bench.bench_render import CONTEXT

TARGET = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args(argv)

    from engine.mail import build_message, build_message_reference, compile_all, render, render_email

    compile_all()
    compiled = render._templates("invitation")
    email = render_email("invitation", CONTEXT)
    message_args = {
        "from_addr": "Happy Paws Veterinary Clinic <no-reply@portal.example>",
        "to_addr": "rosa.diaz@example.com",
        "to_name": "Rosa Diaz",
        "subject": email.subject,
        "text": email.text,
        "html": email.html,
        "message_id": "<inv-42-invitation@portal.example>",
        "date": datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
    }
    size = len(build_message(**message_args))
    common.header(f"message: complete RFC 5322 bytes ({size:,} bytes) vs Jinja render of the compiled HTML")
    jinja = common.Figure("Jinja render of the compiled HTML", "µs")
    fast = common.Figure("build_message (headers + text + HTML, bytes)", "µs")
    reference = common.Figure("build_message_reference (stdlib EmailMessage)", "µs")
    for _ in range(args.repeat):
        jinja.values.append(common.time_per_call(lambda: compiled.html.render(CONTEXT), min_time_s=args.seconds) * 1e6)
        fast.values.append(common.time_per_call(lambda: build_message(**message_args), min_time_s=args.seconds) * 1e6)
        reference.values.append(
            common.time_per_call(lambda: build_message_reference(**message_args), min_time_s=args.seconds) * 1e6
        )
    for fig in (jinja, fast, reference):
        print(fig)
    print(common.verdict("build_message ÷ Jinja", fast.median / jinja.median, TARGET, at_most=True))
    print(f"  (the stdlib path: {reference.median / jinja.median:.0f}× the Jinja render)")
    print(f"# load at the end {common.load():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
