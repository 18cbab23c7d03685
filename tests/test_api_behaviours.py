"""The product's behaviours through the HTTP API (B14): a real uvicorn process, a real HTTP client."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api, token_of


def _client(api: Api, key: str, staff: Any, **body: Any) -> dict[str, Any]:
    body = {"name": "Jo Client", "email": "jo@example.test", "consent": True, **body}
    answer = api.http.post("/v1/clients", json=body, headers=api.headers(key, staff=staff))
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_healthz_and_readyz(api: Api) -> None:
    assert api.http.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = api.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_b14_platform_key_creates_a_practice_and_its_first_admin(api: Api) -> None:
    platform = api.key(None, "staff", name="platform")
    made = api.http.post("/v1/practices", json={"name": "Paws Up", "time_zone": "Europe/London"},
                         headers=api.headers(platform))
    assert made.status_code == 201, made.text
    practice_id = made.json()["id"]
    assert made.json()["portal_url"].endswith(f"/p/{practice_id}")
    admin = api.http.post("/v1/staff", json={"name": "Ada", "email": "ada@paws.test", "role": "admin"},
                          headers=api.headers(platform, practice=practice_id))
    assert admin.status_code == 201, admin.text
    assert admin.json()["actor"] == f"staff:{admin.json()['id']}"


def test_p1_unknown_client_is_refused_clearly(api: Api, practice: Any) -> None:
    key = api.key(practice, "invite")
    answer = api.http.post("/v1/invitations", json={"client_id": 999_999}, headers=api.headers(key))
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "unknown_client"


def test_b14_another_practices_client_is_404(api: Api, practice_factory: Any, client_factory: Any) -> None:
    other = practice_factory("Other Vet")
    theirs = client_factory(other)
    key = api.key(practice_factory("Mine"), "invite,staff")
    for answer in (api.http.get(f"/v1/clients/{theirs.id}", headers=api.headers(key)),
                   api.http.post("/v1/invitations", json={"client_id": theirs.id}, headers=api.headers(key)),
                   api.http.get(f"/v1/clients/{theirs.id}", headers=api.headers(key, practice=other))):
        assert answer.status_code == 404, answer.text
        assert answer.json()["code"] in ("unknown_client", "unknown_practice")


def test_p2_no_consent_nothing_is_sent_and_the_caller_is_told(api: Api, practice: Any) -> None:
    key = api.key(practice, "invite")
    made = _client(api, key, None, consent=False)
    answer = api.http.post("/v1/invitations", json={"client_id": made["id"]}, headers=api.headers(key))
    assert answer.status_code == 409
    assert answer.json()["code"] == "no_consent"


def test_p3_intake_form_creates_and_invites_a_client_as_system(api: Api, practice: Any, worker: Any,
                                                                 sink: Any) -> None:
    key = api.key(practice, "invite", name="intake")
    made = _client(api, key, None, invite=True, email="new@example.test")
    worker.drain()
    assert len(sink.to("new@example.test")) == 1
    events = api.http.get(f"/v1/clients/{made['id']}/timeline", headers=api.headers(api.key(practice, "staff")))
    assert events.status_code == 200
    assert {e["actor"] for e in events.json()} >= {"system:intake"}


def test_p4_p8_invite_an_existing_client_and_see_the_status(api: Api, practice: Any, client_factory: Any,
                                                             worker: Any, sink: Any) -> None:
    client = client_factory()
    key = api.key(practice, "invite,staff")
    answer = api.http.post("/v1/invitations", json={"client_id": client.id, "message": "Welcome!"},
                           headers=api.headers(key, staff=practice.standard))
    assert answer.status_code == 201, answer.text
    assert answer.json()["created_by"] == f"staff:{practice.standard.id}"
    worker.drain()
    status = api.http.get(f"/v1/clients/{client.id}/status", headers=api.headers(key))
    assert status.json()["status"] == "invited"
    assert status.json()["invitation_state"] == "sent"


def test_p11_resend_over_http_revokes_earlier_links(api: Api, practice: Any, client_factory: Any, worker: Any,
                                                    sink: Any) -> None:
    client = client_factory(invite=True)
    worker.drain()
    first = token_of(sink.to(client.primary_email)[-1])
    key = api.key(practice, "staff,portal")
    resent = api.http.post(f"/v1/clients/{client.id}/resend", json={"message": "Here it is again"},
                           headers=api.headers(key, staff=practice.standard))
    assert resent.status_code == 201, resent.text
    worker.drain()
    second = token_of(sink.to(client.primary_email)[-1])
    old = api.http.post("/v1/portal/tokens/verify", json={"token": first}, headers=api.headers(key))
    assert old.status_code == 410
    assert old.json()["code"] == "token_revoked"
    new = api.http.post("/v1/portal/tokens/verify", json={"token": second}, headers=api.headers(key))
    assert new.status_code == 200
    assert new.json()["client_id"] == client.id


def test_p7_portal_redeems_a_link_once_and_p12_resend_then_gives_the_portal_link(
        api: Api, practice: Any, client_factory: Any, worker: Any, sink: Any) -> None:
    client = client_factory(invite=True)
    worker.drain()
    token = token_of(sink.to(client.primary_email)[-1])
    portal = api.key(practice, "portal", name="portal")
    # Opening the link (a mail scanner, a preview) changes nothing: twice, then redeem.
    for _ in range(2):
        assert api.http.post("/v1/portal/tokens/verify", json={"token": token},
                             headers=api.headers(portal)).status_code == 200
    redeemed = api.http.post("/v1/portal/tokens/redeem", json={"token": token, "password": "correct horse 42"},
                             headers=api.headers(portal))
    assert redeemed.status_code == 200, redeemed.text
    again = api.http.post("/v1/portal/tokens/redeem", json={"token": token, "password": "correct horse 42"},
                          headers=api.headers(portal))
    assert again.status_code == 410
    staff = api.key(practice, "staff")
    resend = api.http.post(f"/v1/clients/{client.id}/resend", json={},
                           headers=api.headers(staff, staff=practice.standard))
    assert resend.status_code == 409
    assert resend.json()["code"] == "already_signed_in"
    assert resend.json()["portal_url"] == practice.portal_url


def test_w1_portal_reports_a_sign_in(api: Api, practice: Any, client_factory: Any) -> None:
    client = client_factory(invite=True)
    portal = api.key(practice, "portal", name="portal")
    answer = api.http.post("/v1/portal/sign-ins", json={"client_id": client.id}, headers=api.headers(portal))
    assert answer.status_code == 200, answer.text
    status = api.http.get(f"/v1/clients/{client.id}/status", headers=api.headers(api.key(practice, "staff")))
    assert status.json()["status"] == "signed_in"
