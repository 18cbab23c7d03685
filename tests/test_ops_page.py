"""Ops (issue 5, point 4): the status page, over HTTP and in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import threading
import urllib.error
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.core.settings import get_settings
from engine.web.statuspage import StatusApp, make_server
from tests.conftest import IN_CI, RunningWorker
from workflows.actors import enqueue_steps
from workflows.sweep import sweep

CHROMIUM = "/usr/bin/chromium"
DAY = 86_400
HOSTILE = "<script>alert('x')</script>"


@pytest.fixture
def page(broker: Any, clock: Any) -> Iterator[str]:
    """The status page on a free port of 127.0.0.1, served from a thread; yields its base URL."""
    app = StatusApp(broker=lambda: broker, settings=get_settings, now=clock.now)
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def tell_story(practice_factory: Any, client_factory: Any, clock: Any, broker: Any, sink: Any) -> None:
    """A week of a practice whose reminders go after 2 and 4 days and whose links live 6 days.

    Day 0: Ann, Ben, Cat and Dan are invited; Ann signs in. Day 2: three first reminders; Ben
    signs in on day 3. Day 4: two second reminders; Cat signs in on day 5. Day 6: Dan's
    invitation expires, and Eve's cannot be delivered (the server's refusal quotes markup).
    """
    practice = practice_factory("Quick Paws", reminder_offsets_s=[2 * DAY, 4 * DAY], lifetime_s=6 * DAY)
    by = f"staff:{practice.standard.id}"
    worker = RunningWorker(broker)
    worker.worker.start()

    def at_day(day: int, then: Any = None) -> None:
        clock.set(start + timedelta(days=day, minutes=1))
        sweep(clock.now(), enqueue=enqueue_steps, lease_s=60)
        worker.drain()
        if then is not None:
            engine.record_sign_in(practice.id, then.id)

    try:
        start = clock.now()
        ann, ben, cat, dan = (client_factory(practice, name=n) for n in ("Ann", "Ben", "Cat", "Dan"))
        for client in (ann, ben, cat, dan):
            engine.invite(practice.id, client.id, by=by)
        worker.drain()
        engine.record_sign_in(practice.id, ann.id)
        at_day(2)
        at_day(3, then=ben)
        at_day(4)
        at_day(5, then=cat)
        at_day(6)
        sink.reply = f"451 4.3.0 {HOSTILE}"
        engine.invite(practice.id, client_factory(practice, name="Eve").id, by=by)
        worker.drain()
    finally:
        worker.worker.stop()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:  # it holds the connection
            return error.code, dict(error.headers), error.read()


def test_status_page_shows_figures_chart_conversion_and_dead_letters(
    practice_factory, client_factory, clock, broker, sink, page
):
    tell_story(practice_factory, client_factory, clock, broker, sink)

    code, headers, body = get(page + "/api/status")
    assert code == 200 and headers["Content-Type"] == "application/json"
    snap = json.loads(body)
    assert snap["status"]["invitations"] == {
        "queued": 0, "sent": 0, "reminded": 0, "signed_in": 3, "expired": 1, "revoked": 0, "failed": 1,
    }
    days = {d["day"]: d for d in snap["activity"]}
    assert len(days) == 14
    assert days["2026-12-01"] == {"day": "2026-12-01", "sent": 4, "reminders": 0, "sign_ins": 1, "expiries": 0}
    assert (days["2026-12-03"]["reminders"], days["2026-12-04"]["sign_ins"]) == (3, 1)
    assert (days["2026-12-05"]["reminders"], days["2026-12-06"]["sign_ins"]) == (2, 1)
    assert days["2026-12-07"]["expiries"] == 1
    steps = [(s["reminders"], s["reached"], s["signed_in"]) for s in snap["conversion"]["steps"]]
    assert snap["conversion"]["invitations"] == 4
    assert steps == [(0, 4, 1), (1, 3, 1), (2, 2, 1)]
    assert [s["cumulative_rate"] for s in snap["conversion"]["steps"]] == [0.25, 0.5, 0.75]
    [dead] = snap["dead_letters"]
    assert dead["actor"] == "advance_invitation" and HOSTILE in dead["error"]

    code, headers, body = get(page + "/")
    html = body.decode()
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"]  # no script, nothing from elsewhere
    assert '<meta http-equiv="refresh"' in html
    assert "<svg" in html and html.count("<polyline") == 4
    for label in ("Invitations sent", "Reminders", "Sign-ins", "Expiries"):
        assert label in html
    assert "75 %" in html  # signed in by the second reminder
    assert "<script" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "1 dead letter:" in html and "1 email failed for good" in html

    code, headers, body = get(page + "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    assert b'invites_invitations{state="signed_in"} 3.0' in body

    assert get(page + "/nothing-here")[0] == 404
    refused = urllib.request.Request(page + "/", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(refused, timeout=10)
    with error.value:
        assert error.value.code == 405 and error.value.headers["Allow"] == "GET, HEAD"  # read-only


def test_status_page_says_when_the_database_is_down(broker, clock, page):
    from engine.core.db import init_db

    init_db("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")  # the broker fixture restores it
    code, _, body = get(page + "/api/status")
    assert code == 503 and body.startswith(b"status unavailable")


@pytest.mark.browser
def test_status_page_renders_in_headless_chromium(
    practice_factory, client_factory, clock, broker, sink, page, tmp_path
):
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    tell_story(practice_factory, client_factory, clock, broker, sink)

    shot = tmp_path / "status.png"
    dom = chromium(["--dump-dom", page + "/"], tmp_path / "profile-dom")
    assert "Portal Invites" in dom and "<svg" in dom and "Needs attention" in dom
    chromium([f"--screenshot={shot}", "--window-size=1280,900", page + "/"], tmp_path / "profile-shot")
    if os.environ.get("OPS_PAGE_SCREENSHOT"):  # keep it to look at: OPS_PAGE_SCREENSHOT=/tmp/page.png
        shutil.copy(shot, os.environ["OPS_PAGE_SCREENSHOT"])

    width, height, pixels = decode_png(shot.read_bytes())
    assert (width, height) == (1280, 900)
    counts = Counter(pixels[i : i + 3] for i in range(0, len(pixels), 3))
    assert len(counts) > 50  # text, cards, chart lines, anti-aliasing: not a blank page
    assert counts.most_common(1)[0][1] < 0.9 * width * height  # no colour covers nearly all of it
    top_band = pixels[: width * 3 * 40]  # the dark header
    assert top_band.count(bytes((0x11, 0x18, 0x27))) > width * 20


def chromium(args: list[str], profile: Path, timeout_s: int = 60) -> str:
    """Run headless Chromium once with ``args``; returns its standard output."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", *args,
    ]
    done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and RGB bytes of an 8-bit, non-interlaced RGB or RGBA PNG (standard library only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, (depth, colour_type, interlace)
    channels = 3 if colour_type == 2 else 4
    stride = width * channels
    raw = zlib.decompress(idat)
    out = bytearray()
    previous = bytearray(stride)
    for row in range(height):
        kind = raw[row * (stride + 1)]
        line = bytearray(raw[row * (stride + 1) + 1 : (row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            up_left = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 0xFF
        previous = line
        if channels == 3:
            out += line
        else:
            for i in range(0, stride, 4):
                out += line[i : i + 3]
    return width, height, bytes(out)
