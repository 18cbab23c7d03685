"""``invites api``: serve the HTTP API with uvicorn (docs/api.md)."""

from __future__ import annotations

import argparse
from typing import Any


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from engine.core.settings import get_settings

    settings = get_settings()
    # Each uvicorn worker process builds the app (and boots the engine) itself: the factory.
    uvicorn.run("engine.api.app:create_app", factory=True, host=args.host or settings.api_host,
                port=args.port or settings.api_port, workers=args.workers or settings.api_workers,
                log_level=args.log_level, proxy_headers=True)


def register(sub: Any) -> None:
    """Add ``invites api`` to the ``invites`` parser's subcommands."""
    p = sub.add_parser("api", help="serve the HTTP API (FastAPI on uvicorn)",
                       description="Serves /v1 (docs/api.md), /openapi.json, /docs, /healthz and /readyz. "
                       "Host, port and workers default to API_HOST, API_PORT and API_WORKERS.")
    p.add_argument("--host", help="address to bind (default $API_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default $API_PORT, 8000)")
    p.add_argument("--workers", type=int, help="uvicorn worker processes (default $API_WORKERS, 1)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=_serve, needs_db=False, needs_broker=False)
