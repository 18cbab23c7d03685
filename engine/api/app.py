"""The HTTP API's ASGI app: ``create_app()`` boots the engine and mounts the ``/v1`` resources.

``invites api`` serves it with uvicorn (``uvicorn engine.api.app:create_app --factory`` too).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from engine.api import problems, routes_clients, routes_invitations, routes_portal, routes_practices, routes_views
from engine.api.replay import IdempotencyMiddleware
from engine.api.schemas import Health, Problem
from engine.core.settings import Settings

DESCRIPTION = """The engine's operations for other systems: booking, intake forms, document sharing,
the client portal. Authentication, idempotency, errors and paging: docs/api.md."""

#: Statuses every authenticated operation may answer, besides its own success.
ERROR_STATUSES = {
    "400": "the body is not JSON (`malformed_request`)",
    "401": "no API key, or a malformed, unknown or revoked one (`unauthenticated`)",
    "403": "the key's scopes or the acting staff member's role do not allow it",
    "404": "not found in this practice (another practice's objects too: never 403)",
    "409": "refused by the state of things (`no_consent`, `already_signed_in`, `idempotency_conflict` …)",
    "410": "a portal link that expired, was used or was revoked",
    "422": "a value is missing, malformed or out of range (`invalid_input`)",
    "503": "the database or the broker did not answer; try again (`service_unavailable`)",
}


def _ready() -> dict[str, str]:
    from engine.core.db import connection, db
    from engine.core.runtime import ensure_broker
    from engine.monitoring.figures import queue_counts

    checks = {}
    try:
        with connection():
            db.execute_sql("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which kind
        checks["database"] = type(exc).__name__
    try:
        queue_counts(ensure_broker())
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = type(exc).__name__
    return checks


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the problem+json answers every operation may give."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    ref = {"schema": {"$ref": "#/components/schemas/Problem"}}
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            answers.pop("422", None)  # FastAPI's own validation shape: ours is a problem document
            statuses = ERROR_STATUSES if path.startswith("/v1") else {}
            for status, text in statuses.items():
                answers[status] = {"description": text, "content": {"application/problem+json": ref}}
            answers["500"] = {"description": "an unexpected failure (no details are given)",
                              "content": {"application/problem+json": ref}}
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    app.openapi_schema = doc
    return doc


def create_app(settings: Settings | None = None, *, boot: bool = True) -> FastAPI:
    """The app; ``boot`` readies this process first (settings, clock, database, broker)."""
    if boot:
        from engine.core.runtime import boot as boot_engine

        boot_engine(settings)
        import workflows.actors  # noqa: F401 - the steps an operation sends bind to our broker
    app = FastAPI(title="Portal Invites", version="1", description=DESCRIPTION)
    problems.install(app)
    app.add_middleware(IdempotencyMiddleware)
    for module in (routes_practices, routes_clients, routes_invitations, routes_views, routes_portal):
        app.include_router(module.router)

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        """The process answers (no dependency is checked: that is `/readyz`)."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    async def readyz() -> Any:
        """The database and the broker answer."""
        checks = await run_in_threadpool(_ready)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(Health(status="ok" if ok else "unavailable", checks=checks).model_dump(),
                            status_code=200 if ok else 503)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
