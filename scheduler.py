"""Process entry: APScheduler runs the periodic sweep. Run ``python scheduler.py`` (or ``invites scheduler``).

Only wiring (``workflows.periodic``). It exits 3 when the database or the broker does not answer at
start, 1 when the schema is not upgraded (``engine.core.runtime.start_process``); once running, it
rides out outages.
"""

from __future__ import annotations

from workflows.periodic import run

if __name__ == "__main__":
    raise SystemExit(run())
