"""The auth matrix (B14): every route × each scope, no key, a revoked key, another practice's key."""

from __future__ import annotations

from typing import Any

import pytest

from engine.api.app import create_app
from engine.core.models import ApiKey
from engine.operations.api_keys import SCOPES, revoke_key
from tests.conftest import Api

# (method, path, body, scopes that may call it). {c} is a client of the practice, {i} its invitation.
ROUTES: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    ("POST", "/v1/practices", {"name": "New"}, {"staff"}),
    ("GET", "/v1/practice", None, {"staff"}),
    ("PATCH", "/v1/practice", {"time_zone": "UTC"}, {"staff"}),
    ("PUT", "/v1/practice/portal", {"enabled": True}, {"staff"}),
    ("GET", "/v1/practice/portal-link", None, {"staff"}),
    ("POST", "/v1/staff", {"name": "Sam", "email": "sam2@example.test"}, {"staff"}),
    ("POST", "/v1/clients", {"name": "New Client"}, {"invite", "staff"}),
    ("GET", "/v1/clients/{c}", None, {"staff"}),
    ("PATCH", "/v1/clients/{c}", {"name": "Renamed"}, {"invite", "staff"}),
    ("PUT", "/v1/clients/{c}/consent", {"consent": True}, {"invite", "staff"}),
    ("GET", "/v1/clients/{c}/status", None, {"staff"}),
    ("GET", "/v1/clients/{c}/timeline", None, {"staff"}),
    ("POST", "/v1/invitations", {"client_id": "{c}"}, {"invite", "staff"}),
    ("GET", "/v1/invitations/{i}/timeline", None, {"staff"}),
    ("POST", "/v1/clients/{c}/resend", {}, {"staff"}),
    ("POST", "/v1/clients/{c}/disable", None, {"staff"}),
    ("PUT", "/v1/clients/{c}/portal-email", {"email": "p@example.test"}, {"staff"}),
    ("PUT", "/v1/clients/{c}/primary-email", {"email": "q@example.test"}, {"staff"}),
    ("GET", "/v1/clients/{c}/permissions", None, {"portal", "staff"}),
    ("PATCH", "/v1/clients/{c}/permissions", {"can_message": True}, {"staff"}),
    ("POST", "/v1/clients/{c}/shares", {"documents": 1}, {"invite", "staff"}),
    ("POST", "/v1/clients/{c}/password-resets", None, {"portal", "staff"}),
    ("GET", "/v1/views/needs-attention", None, {"staff"}),
    ("GET", "/v1/views/pending", None, {"staff"}),
    ("GET", "/v1/views/scheduled", None, {"staff"}),
    ("POST", "/v1/portal/tokens/verify", {"token": "nope"}, {"portal"}),
    ("POST", "/v1/portal/tokens/redeem", {"token": "nope", "password": "long enough pw"}, {"portal"}),
    ("POST", "/v1/portal/sign-ins", {"client_id": "{c}"}, {"portal"}),
]
# Routes that name an object of the practice: another practice's key gets 404 there.
OWN_OBJECT = [r for r in ROUTES if "{c}" in r[1] or "{i}" in r[1] or r[2] == {"client_id": "{c}"}]


def _fill(value: Any, ids: dict[str, int]) -> Any:
    if isinstance(value, str):
        return int(ids[value[1]]) if value in ("{c}", "{i}") else value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.fixture
def target(practice: Any, client_factory: Any) -> dict[str, int]:
    client = client_factory(invite=True)
    return {"c": client.id, "i": client.invitations.get().id}


def _call(api: Api, route: tuple[str, str, Any, set[str]], ids: dict[str, int], headers: dict[str, str]) -> Any:
    method, path, body, _ = route
    return api.http.request(method, _fill(path, ids), json=_fill(body, ids), headers=headers)


def test_the_matrix_names_every_route_of_the_openapi_document() -> None:
    doc = create_app(boot=False).openapi()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() if p.startswith("/v1") for m in ops}
    named = {(m, p.replace("{c}", "{client_id}").replace("{i}", "{invitation_id}")) for m, p, _, _ in ROUTES}
    assert named == documented


@pytest.mark.parametrize("scope", SCOPES)
def test_b14_each_scope_reaches_its_routes_and_no_other(api: Api, practice: Any, target: dict[str, int],
                                                        scope: str) -> None:
    key = api.key(practice, scope)
    for route in ROUTES:
        answer = _call(api, route, target, api.headers(key, staff=practice.admin))
        assert answer.status_code != 401, (route, answer.text)
        if scope in route[3]:
            assert answer.status_code != 403 or answer.json()["code"] != "out_of_scope", (route, answer.text)
        else:
            assert (answer.status_code, answer.json()["code"]) == (403, "out_of_scope"), (route, answer.text)


def test_b14_no_key_a_bad_key_and_a_revoked_key_are_401(api: Api, practice: Any, target: dict[str, int]) -> None:
    key = api.key(practice, "invite,staff,portal,ops")
    revoke_key(ApiKey.get(ApiKey.practice == practice.id).id)
    for headers in ({}, {"Authorization": "Bearer pik_abcdefgh_" + "x" * 43}, {"Authorization": "Basic eDp5"},
                    api.headers(key)):
        for route in ROUTES:
            answer = _call(api, route, target, headers)
            assert answer.status_code == 401, (route, headers, answer.text)
            assert answer.json()["code"] == "unauthenticated"
            assert answer.headers["www-authenticate"] == "Bearer"


def test_b14_another_practices_key_gets_404_for_every_object(api: Api, practice_factory: Any,
                                                             target: dict[str, int]) -> None:
    other = practice_factory("Other Vet")
    key = api.key(other, "invite,staff,portal,ops")
    for route in OWN_OBJECT:
        acting = other.admin if "staff" in route[3] else None  # the portal acts on its own
        answer = _call(api, route, target, api.headers(key, staff=acting))
        assert answer.status_code == 404, (route, answer.text)


def test_b14_a_practice_key_naming_another_practice_is_404(api: Api, practice_factory: Any) -> None:
    mine, other = practice_factory("Mine"), practice_factory("Other")
    answer = api.http.get("/v1/practice", headers=api.headers(api.key(mine, "staff"), practice=other))
    assert answer.status_code == 404
    assert answer.json()["code"] == "unknown_practice"


def test_p17_the_acting_staff_members_role_decides(api: Api, practice: Any) -> None:
    key = api.key(practice, "staff")
    body = {"lifetime_s": 86_400}
    standard = api.http.patch("/v1/practice", json=body, headers=api.headers(key, staff=practice.standard))
    assert (standard.status_code, standard.json()["code"]) == (403, "forbidden")
    system = api.http.patch("/v1/practice", json=body, headers=api.headers(key))
    assert (system.status_code, system.json()["code"]) == (403, "forbidden")
    admin = api.http.patch("/v1/practice", json=body, headers=api.headers(key, staff=practice.admin))
    assert admin.status_code == 200, admin.text
    assert admin.json()["lifetime_s"] == 86_400


def test_b14_a_platform_key_must_name_the_practice(api: Api, practice: Any) -> None:
    platform = api.key(None, "staff", name="platform")
    assert api.http.get("/v1/practice", headers=api.headers(platform)).status_code == 422
    assert api.http.get("/v1/practice", headers=api.headers(platform, practice=practice)).json()["id"] == practice.id
    practice_key = api.key(practice, "staff")
    refused = api.http.post("/v1/practices", json={"name": "Nope"}, headers=api.headers(practice_key))
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
