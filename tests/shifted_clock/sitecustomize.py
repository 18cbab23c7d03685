"""Moves the wall clock of every Python process of a test run: CI's check that the suite passes on
any date, and that no test pins a date that a subprocess it starts does not share.

``PYTHONPATH=tests/shifted_clock WALL_CLOCK_SHIFT_DAYS=365 ./dev test`` runs the suite a year
ahead: pytest and every Python subprocess it starts (the CLI, workers, schedulers, the demo)
import this module at start-up and travel by the same number of days, with the time running on.
"""

import os

_days = os.environ.get("WALL_CLOCK_SHIFT_DAYS")
if _days:
    from datetime import UTC, datetime, timedelta

    import time_machine

    time_machine.travel(datetime.now(UTC) + timedelta(days=float(_days)), tick=True).start()
