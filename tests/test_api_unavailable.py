"""503 when the database or the broker does not answer (B14): a problem document, no trace."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults import free_port, wait_for


@pytest.fixture
def stranded_api(tmp_path: Path) -> Iterator[str]:
    """`invites api` whose database and broker both point at ports nobody listens on."""
    import os

    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
           "BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    process = subprocess.Popen([sys.executable, "-m", "engine.cli", "api", "--port", str(port), "--log-level",
                                "critical"], env=env, cwd=Path(__file__).parents[1])
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, "invites api exited"
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout_s=30, what="invites api to answer /healthz")
    yield base
    process.terminate()
    process.wait(timeout=10)


def test_b14_database_and_broker_down_is_503(stranded_api: str) -> None:
    ready = httpx.get(f"{stranded_api}/readyz", timeout=30)
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["checks"]["database"] != "ok" and ready.json()["checks"]["broker"] != "ok"
    key = "pik_abcdefgh_" + "a" * 43
    answer = httpx.get(f"{stranded_api}/v1/practice", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "service_unavailable"
    assert "Traceback" not in answer.text
