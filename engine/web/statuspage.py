"""The operators' status page: ``/`` (HTML), ``/api/status`` (JSON), ``/metrics`` (Prometheus).

Read-only, served by the standard library's ``ThreadingHTTPServer`` (``invites ops serve``).
The page refreshes itself with a meta refresh, runs no script and loads nothing from elsewhere
(its Content-Security-Policy forbids it); every value on it is HTML-escaped. It shows no client
names or addresses, only counts, ids and errors. Bind it to localhost or put it behind the
proxy that authenticates your operators.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dramatiq

from engine.core.clock import SystemClock
from engine.core.db import connection
from engine.core.settings import Settings
from engine.monitoring import deadletters, metrics
from engine.monitoring import figures as ops
from engine.monitoring import history as ops_history
from engine.web.svgchart import Series, line_chart

logger = logging.getLogger("invites.statuspage")

#: The page reloads itself this often.
REFRESH_S = 15
CHART_DAYS = 14
CONVERSION_DAYS = 30
DEAD_LETTERS_SHOWN = 50
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class StatusApp:
    """What the page reads: the broker, the settings, the engine's clock and the wall clock."""

    broker: Callable[[], dramatiq.Broker]
    settings: Callable[[], Settings]
    now: Callable[[], datetime]
    wall_now: Callable[[], datetime] = SystemClock().now

    def __post_init__(self) -> None:
        self.registry = metrics.registry(broker=self.broker, now=self.now)

    def snapshot(self) -> dict[str, Any]:
        """Every figure of the page, as JSON-ready values (``/api/status`` is exactly this)."""
        now, settings = self.now(), self.settings()
        broker = self.broker()
        with connection():
            status = ops.collect(now, broker=broker, settings=settings)
            activity = ops_history.daily_activity(now, days=CHART_DAYS)
            cohort, conversion = ops_history.conversion_by_reminders(now, days=CONVERSION_DAYS)
            latencies = ops.delivery_latencies(now)
        dead: list[dict[str, Any]] = []
        dead_error = None
        if status.broker_error is None:
            try:
                dead = [d.to_dict() for d in deadletters.list_dead(broker, now=self.wall_now())]
            except Exception as exc:  # noqa: BLE001 - RabbitMQ, or Redis went away meanwhile
                dead_error = str(exc)
        return {
            "status": status.to_dict(),
            "activity": [day.to_dict() for day in activity],
            "conversion": {"days": CONVERSION_DAYS, "invitations": cohort,
                           "steps": [step.to_dict() for step in conversion]},
            "latency_s": {kind: _percentiles(values) for kind, values in sorted(latencies.items())},
            "dead_letters": dead,
            "dead_letters_error": dead_error,
        }


def _percentiles(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"count": len(ordered), "p50": pick(0.5), "p95": pick(0.95), "max": round(ordered[-1], 3)}


# --- HTML -----------------------------------------------------------------------------------

def e(value: object) -> str:
    """Escaped text of ``value``; None shows as a dash."""
    return "-" if value is None else escape(str(value))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def _rate_cell(rate: float | None) -> str:
    bar = f'<span class="bar"><i style="width:{(rate or 0) * 100:.0f}%"></i></span>'
    return f'<span class="rate">{_pct(rate)}</span>{bar}'


def _table(headers: list[str], rows: list[list[str]], empty: str, cls: str = "") -> str:
    if not rows:
        return f'<p class="empty">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _card(title: str, value: str, note: str, level: str = "ok") -> str:
    return (f'<div class="card {level}"><div class="card-title">{e(title)}</div>'
            f'<div class="card-value">{e(value)}</div><div class="card-note">{e(note)}</div></div>')


def render_page(snap: dict[str, Any]) -> str:
    """The HTML page of a ``StatusApp.snapshot()``."""
    st = snap["status"]
    problems = st["problems"]
    workers, schedulers, backlog, failures = st["workers"], st["schedulers"], st["backlog"], st["failures"]
    banner = (
        '<section class="banner ok">All clear: invitations are flowing.</section>'
        if not problems
        else '<section class="banner bad"><strong>Needs attention</strong><ul>'
        + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul></section>"
    )
    last_sweep = (schedulers[0].get("last_sweep") or {}) if schedulers else {}
    cards = "".join([
        _card("Workers", str(len(workers)), f"{sum(w.get('threads', 0) for w in workers)} threads alive",
              "ok" if workers else "bad"),
        _card("Scheduler", "alive" if schedulers else "down",
              f"last sweep {last_sweep.get('duration_ms', '-')} ms, claimed {last_sweep.get('claimed', '-')}"
              if schedulers else "no heartbeat", "ok" if schedulers else "bad"),
        _card("Due backlog", str(backlog["due"]), f"oldest waiting {ops.human_duration(backlog['oldest_age_s'])}",
              "warn" if any("overdue" in p for p in problems) else "ok"),
        _card("Failed, last hour", str(failures["total_failed"]),
              f"{sum(failures['retrying'].values())} being retried", "bad" if failures["total_failed"] else "ok"),
        _card("Dead letters", str(st["dead_letters"]), "messages Dramatiq gave up on",
              "warn" if st["dead_letters"] else "ok"),
    ])
    queues = _table(
        ["Queue", "Ready", "Delayed", "In flight", "Orphaned", "Dead"],
        [[e(q["queue"]), e(q["ready"]), e(q["delayed"]), e(q["in_flight"]), e(q["orphaned"]), e(q["dead"])]
         for q in st["queues"]],
        f"Broker did not answer: {st['broker_error']}" if st["broker_error"] else "No queues.",
        "num",
    )
    states = "".join(
        f'<div class="state s-{e(name)}"><span>{e(name.replace("_", " "))}</span><b>{e(n)}</b></div>'
        for name, n in st["invitations"].items()
    )
    days = snap["activity"]
    chart = line_chart(
        [d["day"][5:] for d in days],
        [
            Series("Invitations sent", "#2563eb", [d["sent"] for d in days]),
            Series("Reminders", "#d97706", [d["reminders"] for d in days]),
            Series("Sign-ins", "#059669", [d["sign_ins"] for d in days]),
            Series("Expiries", "#9ca3af", [d["expiries"] for d in days]),
        ],
        title=f"Sends, reminders, sign-ins and expiries per day, last {len(days)} days (UTC)",
    )
    conv = snap["conversion"]
    conversion = _table(
        ["Reminders before sign-in", "Invitations reaching it", "Signed in at this stage", "Stage conversion",
         "Signed in by now"],
        [[e(s["reminders"]), e(s["reached"]), e(s["signed_in"]), _rate_cell(s["rate"]),
          e(_pct(s["cumulative_rate"]))] for s in conv["steps"]],
        "No invitation was sent in this period.",
        "num",
    )
    latency = _table(
        ["Email", "Sent (last hour)", "p50", "p95", "Slowest"],
        [[e(kind), e(v["count"]), e(ops.human_duration(v["p50"])), e(ops.human_duration(v["p95"])),
          e(ops.human_duration(v["max"]))] for kind, v in snap["latency_s"].items()],
        "No email was sent in the last hour.",
        "num",
    )
    dead = _table(
        ["Id", "Queue", "Step", "Arguments", "Error", "Retries", "Age"],
        [[f'<code title="{e(d["id"])}">{e(d["id"][:8])}</code>', e(d["queue"]), e(d["actor"]),
          f"<code>{e(json.dumps(d['args'])[:120])}</code>", e(d["error"] or "(no traceback kept)"),
          e(d["retries"]), e(ops.human_duration(d["age_s"]))] for d in snap["dead_letters"][:DEAD_LETTERS_SHOWN]],
        snap["dead_letters_error"] or "No dead letters.",
    )
    more = len(snap["dead_letters"]) - DEAD_LETTERS_SHOWN
    procs = _table(
        ["Process", "Host", "Pid", "Threads", "Processed", "Failed", "Running now", "Last beat"],
        [[e("worker"), e(w.get("host")), e(w.get("pid")), e(w.get("threads")), e(w.get("processed")),
          e(w.get("failed")), e(w.get("in_progress")), e(w.get("last_beat"))] for w in workers]
        + [[e("scheduler"), e(s.get("host")), e(s.get("pid")), "", e(s.get("last_sweep", {}).get("claimed")), "",
            "", e(s.get("last_beat"))] for s in schedulers],
        "No process has a live heartbeat.",
    )
    return PAGE.format(
        refresh=REFRESH_S,
        at=e(st["at"]),
        broker=e(st["broker"]),
        title_state=e("OK" if not problems else f"{len(problems)} problem(s)"),
        banner=banner,
        cards=cards,
        queues=queues,
        states=states,
        chart=chart,
        conv_days=e(conv["days"]),
        conv_total=e(conv["invitations"]),
        conversion=conversion,
        latency=latency,
        dead=dead + (f'<p class="empty">and {more} more: <code>invites ops dead-letters list</code></p>'
                     if more > 0 else ""),
        procs=procs,
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Portal Invites ops: {title_state}</title>
<style>
body{{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;
background:#f3f4f6;color:#111827}}
header{{background:#111827;color:#f9fafb;padding:14px 28px;display:flex;justify-content:space-between;
align-items:baseline}}
header h1{{margin:0;font-size:19px;font-weight:600}} header span{{color:#9ca3af;font-size:13px}}
main{{padding:18px 28px;max-width:1240px}}
h2{{font-size:15px;margin:22px 0 8px;color:#374151}}
.banner{{padding:10px 14px;border-radius:8px;margin-bottom:14px}} .banner ul{{margin:4px 0 0;padding-left:20px}}
.banner.ok{{background:#d1fae5;color:#065f46}} .banner.bad{{background:#fee2e2;color:#991b1b}}
.cards{{display:grid;grid-template-columns:repeat(5,1fr);gap:12px}}
.card{{background:#fff;border-radius:8px;padding:12px 14px;border-top:4px solid #10b981;box-shadow:0 1px 2px #0001}}
.card.warn{{border-top-color:#f59e0b}} .card.bad{{border-top-color:#ef4444}}
.card-title{{color:#6b7280;font-size:12px;text-transform:uppercase;letter-spacing:.04em}}
.card-value{{font-size:26px;font-weight:650;margin:2px 0}} .card-note{{color:#6b7280;font-size:12px}}
.grid2{{display:grid;grid-template-columns:1fr 1fr;gap:18px}}
table{{border-collapse:collapse;width:100%;background:#fff;border-radius:8px;overflow:hidden;
box-shadow:0 1px 2px #0001}}
span.rate{{display:inline-block;min-width:36px}}
th,td{{padding:6px 10px;text-align:left;border-bottom:1px solid #e5e7eb;vertical-align:top}}
th{{background:#f9fafb;color:#4b5563;font-weight:600;font-size:12px}}
table.num td+td{{font-variant-numeric:tabular-nums}}
.states{{display:flex;flex-wrap:wrap;gap:8px}}
.state{{background:#fff;border-radius:8px;padding:6px 12px;box-shadow:0 1px 2px #0001;display:flex;gap:8px}}
.state span{{color:#6b7280}} .s-failed b{{color:#b91c1c}} .s-signed_in b{{color:#047857}}
.panel{{background:#fff;border-radius:8px;padding:8px 10px;box-shadow:0 1px 2px #0001}}
.chart .grid{{stroke:#e5e7eb}} .chart .axis{{fill:#6b7280;font-size:11px}} .chart .legend{{fill:#374151;font-size:12px}}
table.num td{{white-space:nowrap}}
.bar{{display:inline-block;width:56px;height:8px;background:#e5e7eb;border-radius:4px;margin-left:8px}}
.bar i{{display:block;height:8px;background:#059669;border-radius:4px}}
.empty{{color:#6b7280;background:#fff;padding:10px 12px;border-radius:8px;margin:0}}
code{{font:12px ui-monospace,Menlo,Consolas,monospace}}
footer{{color:#6b7280;font-size:12px;padding:8px 28px 24px}} a{{color:#2563eb}}
</style></head>
<body>
<header><h1>Portal Invites · operations</h1><span>{at} · broker {broker} · refreshes every {refresh} s</span></header>
<main>
{banner}
<div class="cards">{cards}</div>
<h2>Activity</h2><div class="panel">{chart}</div>
<div class="grid2">
<div><h2>Queues</h2>{queues}<h2>Invitations by state</h2><div class="states">{states}</div></div>
<div><h2>Invited → signed in, by reminders (sent in the last {conv_days} days: {conv_total})</h2>{conversion}
<h2>Delivery latency, owed → accepted by the mail server (last hour)</h2>{latency}</div>
</div>
<h2>Dead letters</h2>{dead}
<h2>Processes</h2>{procs}
</main>
<footer>Read-only. <a href="/api/status">/api/status</a> (JSON) · <a href="/metrics">/metrics</a> (Prometheus) ·
operations guide: docs/operations.md</footer>
</body></html>
"""


# --- HTTP -----------------------------------------------------------------------------------

def make_handler(app: StatusApp) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``app``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "PortalInvitesStatus/1"

        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            self._respond(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._respond(head=True)

        def _refuse(self) -> None:
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only\n", "text/plain; charset=utf-8",
                       extra={"Allow": "GET, HEAD"})

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

        def _respond(self, *, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/":
                    body, ctype = render_page(app.snapshot()).encode(), "text/html; charset=utf-8"
                elif path == "/api/status":
                    body, ctype = json.dumps(app.snapshot(), indent=2).encode(), "application/json"
                elif path == "/metrics":
                    body, ctype = metrics.render(app.registry), metrics.CONTENT_TYPE
                else:
                    self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", head=head)
                    return
            except Exception as exc:  # noqa: BLE001 - the database is down: say so, keep serving
                logger.warning("status page failed", extra={"action": "statuspage_failed", "error": str(exc)})
                message = f"status unavailable: {type(exc).__name__}: {exc}\n".encode()
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, message, "text/plain; charset=utf-8", head=head)
                return
            self._send(HTTPStatus.OK, body, ctype, head=head)

        def _send(self, code: HTTPStatus, body: bytes, ctype: str, *, head: bool = False,
                  extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the standard library's name
            logger.debug(format, *args, extra={"action": "http_request"})

    return Handler


def make_server(app: StatusApp, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """A server for ``app`` bound to ``host:port`` (port 0: any free one); call ``serve_forever``."""
    server = ThreadingHTTPServer((host, port), make_handler(app))
    server.daemon_threads = True
    return server
