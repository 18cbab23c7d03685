"""The OpenAPI document: the committed copy is in step, and schemathesis fuzzes the API from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from engine.api.app import create_app
from tests.conftest import Api

#: Generated requests per operation: enough to walk the edges, few enough to stay fast.
EXAMPLES = 10
COMMITTED = Path(__file__).parent.parent / "docs" / "openapi.json"


def render() -> str:
    return json.dumps(create_app(boot=False).openapi(), indent=2, sort_keys=True) + "\n"


def test_committed_openapi_document_is_in_step() -> None:
    """docs/openapi.json is what the app serves; to refresh it: python -m tests.test_api_openapi."""
    assert COMMITTED.read_text() == render(), "regenerate docs/openapi.json: python -m tests.test_api_openapi"


def test_served_openapi_document_is_the_committed_one(api: Api) -> None:
    served = api.http.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == json.loads(COMMITTED.read_text())
    assert api.http.get("/docs").status_code == 200


def test_schemathesis_finds_no_5xx_and_every_answer_matches_the_schema(api: Api, practice: Any,
                                                                     client_factory: Any) -> None:
    """Every operation, a few generated requests each, for a practice with invited clients and a key
    of every scope: no 5xx, every status documented, every body as its schema says."""
    for _ in range(3):
        client_factory(invite=True)
    auth = api.headers(api.key(practice, "invite,staff,portal,ops"), staff=practice.admin)
    schema = schemathesis.openapi.from_dict(json.loads(COMMITTED.read_text()))
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 25
    answered: list[int] = []

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            headers = {k: v for k, v in auth.items() if k not in (case.headers or {})}
            response = case.call_and_validate(base_url=api.server.base_url, headers=headers, checks=checks)
            answered.append(response.status_code)

        run()
    assert len(answered) >= 3 * len(operations)
    assert any(200 <= status < 300 for status in answered)


if __name__ == "__main__":
    COMMITTED.write_text(render())
    print(f"wrote {COMMITTED}")
