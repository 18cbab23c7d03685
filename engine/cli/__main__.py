"""``python -m engine.cli``: the same as ``invites``."""

from engine.cli.main import main

raise SystemExit(main())
