"""The built wheel, installed in a fresh virtualenv outside the repository, renders and sends an
invitation: every package of the layout and the templates are in it (packages by discovery)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import TEST_REDIS_URL

ROOT = Path(__file__).parents[1]

# Runs in the fresh virtualenv, from a folder outside the repository.
SCRIPT = r"""
import sys
from pathlib import Path

import engine
from engine.core import runtime, schema
from engine.core.db import connection
from engine.mail.render import TEMPLATES_DIR

assert "site-packages" in engine.__file__, engine.__file__
assert "site-packages" in str(TEMPLATES_DIR), TEMPLATES_DIR
runtime.boot()
from workflows.actors import advance_invitation

with connection():
    schema.upgrade()
    practice = engine.create_practice("Wheel Vets")
    admin = engine.create_staff(practice.id, "Ada", "ada@wheel.test", "admin")
    client = engine.create_client(practice.id, "Wendy", email="wendy@example.test", consent=True,
                                  by=f"staff:{admin.id}")
    invitation = engine.invite(practice.id, client.id, by=f"staff:{admin.id}")
    advance_invitation(invitation.id)  # the step itself, here: render, build, send over SMTP
    print(engine.portal_status(practice.id, client.id).status)
"""


def test_wheel_in_a_fresh_virtualenv_renders_and_sends_an_invitation(tmp_path, sink, smtp_server, redis_client):
    # Given the wheel, built from a clean copy of the repository as a release would be (setuptools
    # builds in the source tree: a build/ left by an earlier build would hide a missing package)
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests", "bench"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, timeout=300)
    [wheel] = wheels.glob("portal_invites-*.whl")
    # installed alone in a fresh virtualenv; its dependencies come from this one's site-packages
    # (a path in a .pth file: a new install of each would need the network and minutes)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    fresh_site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    (fresh_site / "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(fresh_site),
                    str(wheel)], check=True, capture_output=True, timeout=300)

    # When a program outside the repository invites a client and runs the step
    _, port = smtp_server
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "CLOCK_OFFSET_FILE")}
    env.update(DATABASE_URL=f"sqlite:///{outside / 'invites.db'}", MAIL_URL=f"smtp://127.0.0.1:{port}",
               BROKER_URL=TEST_REDIS_URL)
    done = subprocess.run([python, "-I", "-c", SCRIPT], cwd=outside, env=env, capture_output=True, text=True,
                          timeout=120)

    # Then the invitation is rendered from the installed templates and accepted by the SMTP server
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "invited"
    [message] = sink.to("wendy@example.test")
    assert "Wheel Vets" in message["Subject"] or "Wheel Vets" in str(message["From"])
    assert message.get_body(preferencelist=("html",)) is not None
