"""Process entry: the Dramatiq worker. Run ``dramatiq worker`` (or ``invites worker``).

Only wiring: settings, logging, database, broker, then the actors.
"""

from __future__ import annotations

from engine.logs import setup_logging
from engine.mail import compile_all
from engine.runtime import boot
from engine.settings import get_settings

setup_logging(get_settings().log_format)
settings = boot()
compile_all()  # a broken template stops the worker at start, not at the first email

from engine.runtime import broker as _broker  # noqa: E402

broker = _broker()
