"""Issue 7: the shortcuts taken for speed give the same results as the plain ways."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine.core.db import db, init_db, write
from engine.mail import render
from engine.mail.render import KINDS, render_email
from tests.test_mail import invitation_context

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"custom_message": "Bring Rex's papers,\nplease <b>{{ 7*7 }}</b>", "documents_waiting": True},
        {"client_name": "Zoë Ünal", "practice_name": "Clinique Vétérinaire & Fils", "logo_url": ""},
    ],
)
def test_rendering_without_jinja_globals_gives_what_template_render_gives(kind: str, changes: dict) -> None:
    context = {**invitation_context(reminder_number=2, reset_url="https://portal.example/p/7/reset?token=t",
                                    expires_at_text="in one hour"), **changes}
    compiled = render._templates(kind)
    email = render_email(kind, context)

    html = compiled.html.render(context)
    assert email.html == html.encode("ascii", "xmlcharrefreplace").decode("ascii")
    assert email.text == compiled.text.render(context)
    with pytest.raises(Exception, match="undefined"):  # StrictUndefined still guards the shortcut
        render._render(compiled.html, {})


WRITER = """
import sys
from engine.core.db import init_db, write, db
init_db(sys.argv[1])
for _ in range(int(sys.argv[2])):
    with write():
        db.execute_sql("UPDATE counter SET n = n + 1")
        with write():  # nested: a savepoint inside the same queue turn
            db.execute_sql("UPDATE counter SET m = m + 1")
"""


def test_sqlite_writers_of_many_threads_and_processes_queue_without_lock_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    init_db(url)
    db.execute_sql("CREATE TABLE counter (n INTEGER, m INTEGER)")
    db.execute_sql("INSERT INTO counter VALUES (0, 0)")
    db.close()
    rounds, errors = 50, []
    others = [
        subprocess.Popen([sys.executable, "-c", WRITER, url, str(rounds)], cwd=ROOT, stderr=subprocess.PIPE)
        for _ in range(2)
    ]

    def writer() -> None:
        try:
            with db.connection_context():
                for _ in range(rounds):
                    with write():
                        db.execute_sql("UPDATE counter SET n = n + 1")
                        with write():
                            db.execute_sql("UPDATE counter SET m = m + 1")
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for proc in others:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr.decode()
    assert errors == []
    with db.connection_context():
        assert db.execute_sql("SELECT n, m FROM counter").fetchone() == (6 * rounds, 6 * rounds)
