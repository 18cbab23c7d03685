"""Staff operations over HTTP (B14): shares, emails, permissions, disable, portal switch, views."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api


def _staff(api: Api, practice: Any) -> dict[str, str]:
    return api.headers(api.key(practice, "staff"), staff=practice.standard)


def _admin(api: Api, practice: Any) -> dict[str, str]:
    return api.headers(api.key(practice, "staff", name="admin-tool"), staff=practice.admin)


def test_p5_sharing_documents_invites_a_client_without_access(api: Api, practice: Any, client_factory: Any) -> None:
    client = client_factory()
    answer = api.http.post(f"/v1/clients/{client.id}/shares", json={"documents": 2},
                           headers=api.headers(api.key(practice, "invite", name="docs")))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "invited" and answer.json()["invited"] is True


def test_p9_portal_email_changes_alone(api: Api, practice: Any, client_factory: Any) -> None:
    client = client_factory(invite=True)
    answer = api.http.put(f"/v1/clients/{client.id}/portal-email", json={"email": "portal@example.test"},
                          headers=_staff(api, practice))
    assert answer.status_code == 200, answer.text
    assert answer.json()["portal_email"] == "portal@example.test"
    got = api.http.get(f"/v1/clients/{client.id}", headers=_staff(api, practice)).json()
    assert got["primary_email"] == client.primary_email


def test_p10_primary_email_change_with_disable_and_resend(api: Api, practice: Any, client_factory: Any) -> None:
    client = client_factory(invite=True)
    answer = api.http.put(f"/v1/clients/{client.id}/primary-email",
                          json={"email": "moved@example.test", "portal_action": "disable_and_resend"},
                          headers=_staff(api, practice))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["access_affected"] is True
    assert body["portal_email"] == "moved@example.test" and body["invitation_id"] is not None
    bad = api.http.put(f"/v1/clients/{client.id}/primary-email", json={"email": "x@example.test",
                                                                        "portal_action": "sometimes"},
                       headers=_staff(api, practice))
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_input")


def test_p13_paying_needs_billing_and_online_payments(api: Api, practice: Any, client_factory: Any) -> None:
    client = client_factory(invite=True)
    refused = api.http.patch(f"/v1/clients/{client.id}/permissions", json={"can_pay": True, "can_view_billing": True},
                             headers=_staff(api, practice))
    assert (refused.status_code, refused.json()["code"]) == (409, "permission_rule")
    allowed = api.http.patch(f"/v1/clients/{client.id}/permissions", json={"can_view_billing": True},
                             headers=_staff(api, practice))
    assert allowed.status_code == 200 and allowed.json()["permissions"]["can_view_billing"] is True
    portal = api.http.get(f"/v1/clients/{client.id}/permissions",
                          headers=api.headers(api.key(practice, "portal", name="portal")))
    assert portal.status_code == 200 and "effective" in portal.json()


def test_p14_disable_then_invite_re_enables(api: Api, practice: Any, client_factory: Any) -> None:
    client = client_factory(invite=True)
    disabled = api.http.post(f"/v1/clients/{client.id}/disable", headers=_staff(api, practice))
    assert disabled.status_code == 200 and disabled.json()["status"] == "disabled"
    again = api.http.post("/v1/invitations", json={"client_id": client.id}, headers=_staff(api, practice))
    assert again.status_code == 201, again.text
    status = api.http.get(f"/v1/clients/{client.id}/status", headers=_staff(api, practice)).json()
    assert status["status"] == "invited"


def test_p15_portal_off_refuses_invitations_and_sign_ins(api: Api, practice: Any, client_factory: Any) -> None:
    client = client_factory()
    off = api.http.put("/v1/practice/portal", json={"enabled": False}, headers=_admin(api, practice))
    assert off.status_code == 200 and off.json()["portal_enabled"] is False
    refused = api.http.post("/v1/invitations", json={"client_id": client.id}, headers=_staff(api, practice))
    assert (refused.status_code, refused.json()["code"]) == (409, "portal_off")
    on = api.http.put("/v1/practice/portal", json={"enabled": True}, headers=_admin(api, practice))
    assert on.json()["changed"] is True


def test_p16_portal_link_and_widget(api: Api, practice: Any) -> None:
    answer = api.http.get("/v1/practice/portal-link", params={"label": "Our portal"}, headers=_staff(api, practice))
    assert answer.status_code == 200, answer.text
    assert answer.json()["portal_url"] == practice.portal_url
    assert "Our portal" in answer.json()["widget_html"]


def test_p7_password_reset_needs_a_signed_in_client(api: Api, practice: Any, client_factory: Any) -> None:
    client = client_factory(invite=True)
    refused = api.http.post(f"/v1/clients/{client.id}/password-resets", headers=_staff(api, practice))
    assert (refused.status_code, refused.json()["code"]) == (409, "not_signed_in")


def test_p8_views_page_with_limit_and_next_offset(api: Api, practice: Any, client_factory: Any) -> None:
    for _ in range(3):
        client_factory(invite=True)
    first = api.http.get("/v1/views/pending", params={"limit": 2}, headers=_staff(api, practice)).json()
    assert (first["total"], len(first["items"]), first["next_offset"]) == (3, 2, 2)
    rest = api.http.get("/v1/views/pending", params={"limit": 2, "offset": first["next_offset"]},
                        headers=_staff(api, practice)).json()
    assert (len(rest["items"]), rest["next_offset"]) == (1, None)
    for view in ("needs-attention", "scheduled"):
        assert api.http.get(f"/v1/views/{view}", headers=_staff(api, practice)).status_code == 200
    too_big = api.http.get("/v1/views/pending", params={"limit": 5000}, headers=_staff(api, practice))
    assert (too_big.status_code, too_big.json()["code"]) == (422, "invalid_input")


def test_b14_malformed_json_is_400_and_unknown_fields_422(api: Api, practice: Any) -> None:
    headers = {**_staff(api, practice), "Content-Type": "application/json"}
    broken = api.http.post("/v1/clients", content=b"{not json", headers=headers)
    assert (broken.status_code, broken.json()["code"]) == (400, "malformed_request")
    typo = api.http.post("/v1/clients", json={"name": "A", "emial": "a@example.test"}, headers=headers)
    assert (typo.status_code, typo.json()["code"]) == (422, "invalid_input")
    assert "Traceback" not in typo.text
