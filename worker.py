"""Process entry: the Dramatiq worker. Run ``dramatiq worker`` (or ``invites worker``).

Only wiring: settings, logging, the start-up check (exit 3 when the database or the broker does
not answer, 1 when the schema is not upgraded), database, broker, then the actors.
"""

from __future__ import annotations

from engine.core.runtime import broker as _broker
from engine.core.runtime import start_process
from engine.mail import compile_all

settings = start_process("worker")
compile_all()  # a broken template stops the worker at start, not at the first email

import workflows.actors  # noqa: E402,F401 - declares the actors on the broker start_process() set

broker = _broker()
