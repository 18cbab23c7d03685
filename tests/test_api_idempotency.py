"""``Idempotency-Key`` over HTTP: replay, conflict, refusals forgotten, concurrency (B14)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from engine.core.models import Client, Invitation
from tests.conftest import Api


def test_b14_same_key_same_body_replays_the_first_answer(api: Api, practice: Any, client_factory: Any) -> None:
    client = client_factory()
    key = api.key(practice, "invite")
    first = api.http.post("/v1/invitations", json={"client_id": client.id}, headers=api.headers(key, idem="k-1"))
    again = api.http.post("/v1/invitations", json={"client_id": client.id}, headers=api.headers(key, idem="k-1"))
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert Invitation.select().where(Invitation.client == client.id).count() == 1


def test_b14_same_key_other_body_is_409_idempotency_conflict(api: Api, practice: Any, client_factory: Any) -> None:
    a, b = client_factory(), client_factory()
    key = api.key(practice, "invite")
    assert api.http.post("/v1/invitations", json={"client_id": a.id},
                         headers=api.headers(key, idem="k-2")).status_code == 201
    other = api.http.post("/v1/invitations", json={"client_id": b.id}, headers=api.headers(key, idem="k-2"))
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["code"] == "idempotency_conflict"
    assert Invitation.select().where(Invitation.client == b.id).count() == 0


def test_b14_a_refused_request_is_not_remembered(api: Api, practice: Any, client_factory: Any) -> None:
    client = client_factory(consent=False)
    key = api.key(practice, "invite,staff")
    refused = api.http.post("/v1/invitations", json={"client_id": client.id}, headers=api.headers(key, idem="k-3"))
    assert refused.json()["code"] == "no_consent"
    assert api.http.put(f"/v1/clients/{client.id}/consent", json={"consent": True},
                        headers=api.headers(key)).status_code == 200
    retried = api.http.post("/v1/invitations", json={"client_id": client.id}, headers=api.headers(key, idem="k-3"))
    assert retried.status_code == 201, retried.text


def test_b14_keys_belong_to_the_practice_not_to_the_api_key(api: Api, practice_factory: Any) -> None:
    mine, theirs = practice_factory("Mine"), practice_factory("Theirs")
    body = {"name": "Same Body", "email": "same@example.test", "consent": True}
    one = api.http.post("/v1/clients", json=body, headers=api.headers(api.key(mine, "invite"), idem="shared"))
    two = api.http.post("/v1/clients", json=body, headers=api.headers(api.key(theirs, "invite"), idem="shared"))
    assert one.status_code == two.status_code == 201
    assert one.json()["id"] != two.json()["id"]
    # A second key of the same practice (a rotated one, say) gets the first answer.
    three = api.http.post("/v1/clients", json=body, headers=api.headers(api.key(mine, "invite"), idem="shared"))
    assert three.content == one.content


def test_b14_two_concurrent_requests_with_one_key_create_one_client_and_one_invitation(
        api: Api, practice: Any) -> None:
    key = api.key(practice, "invite")
    body = {"name": "Racing Client", "email": "race@example.test", "consent": True, "invite": True}

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=api.server.base_url, timeout=30) as http:
            return http.post("/v1/clients", json=body, headers=api.headers(key, idem="race-1"))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    assert len({a.content for a in answers}) == 1
    assert Client.select().where(Client.name == "Racing Client").count() == 1
    assert Invitation.select().where(Invitation.practice == practice.id).count() == 1


def test_b14_idempotency_key_too_long_is_422(api: Api, practice: Any) -> None:
    answer = api.http.post("/v1/clients", json={"name": "X"},
                           headers=api.headers(api.key(practice, "invite"), idem="x" * 256))
    assert answer.status_code == 422
    assert answer.json()["code"] == "invalid_input"
