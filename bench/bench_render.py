"""Target 4: the per-recipient cost of an invitation email (HTML and text, ``render_email``)
against a plain Jinja render of the compiled HTML, measured side by side in one run.

MJML is compiled once per template version (``compile_all``), as the worker does at start;
both sides then render the same context. Also shown, for scale: ``mjml2html`` per recipient.

    .venv/bin/python -m bench.bench_render [--repeat 3] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import sys

import mjml

from bench import common

TARGET = 1.5

CONTEXT: dict[str, object] = {
    "practice_name": "Happy Paws Veterinary Clinic",
    "logo_url": "https://cdn.example/logos/happy-paws.png",
    "client_name": "Rosa Diaz",
    "sign_in_url": "https://portal.example/p/7",
    "set_password_url": "https://portal.example/p/7/set-password?token=" + "x" * 43,
    "expires_on": "Tuesday 15 December 2026",
    "custom_message": "",
    "documents_waiting": False,
    "portal_url": "https://portal.example/p/7",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args(argv)

    from engine.mail import compile_all, render, render_email

    compile_all()
    compiled = render._templates("invitation")
    source = (render.TEMPLATES_DIR / "invitation.mjml").read_text(encoding="utf-8")
    common.header("render: per-recipient invitation email vs plain Jinja of the compiled HTML")
    ours = common.Figure("render_email('invitation') (HTML + text)", "µs")
    jinja = common.Figure("Jinja render of the compiled HTML", "µs")
    mjml_each = common.Figure("mjml2html per recipient (for scale)", "µs")
    for _ in range(args.repeat):
        jinja.values.append(common.time_per_call(lambda: compiled.html.render(CONTEXT), min_time_s=args.seconds) * 1e6)
        ours.values.append(
            common.time_per_call(lambda: render_email("invitation", CONTEXT), min_time_s=args.seconds) * 1e6
        )
        mjml_each.values.append(
            common.time_per_call(lambda: mjml.mjml2html(source, fonts={}, disable_comments=True),
                                 min_time_s=args.seconds) * 1e6
        )
    for fig in (jinja, ours, mjml_each):
        print(fig)
    print(common.verdict("render_email ÷ Jinja", ours.median / jinja.median, TARGET, at_most=True))
    ratios = [o / j for o, j in zip(ours.values, jinja.values, strict=True)]
    print(f"  per-round ratios: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"# load at the end {common.load():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
