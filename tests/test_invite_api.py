"""The door for other systems: inviting, refusals with stable codes, idempotency, links."""

from __future__ import annotations

from datetime import timedelta

import pytest

import engine
from engine.core.models import AuditEvent, IdempotencyKey, Invitation, OutboxEmail, Token
from tests.conftest import token_of


def row_counts() -> dict[str, int]:
    return {m.__name__: m.select().count() for m in (Invitation, Token, OutboxEmail, IdempotencyKey, AuditEvent)}


def test_p1_unknown_client_is_refused(practice, staff_by):
    before = row_counts()
    with pytest.raises(engine.UnknownClient) as refused:
        engine.invite(practice.id, 999_999, by=staff_by)
    assert refused.value.code == "unknown_client"
    assert row_counts() == before


def test_p1_client_of_another_practice_is_not_found(practice_factory, client_factory, staff_by, practice):
    other = practice_factory("Other Clinic")
    stranger = client_factory(other)
    before = row_counts()
    with pytest.raises(engine.UnknownClient):
        engine.invite(practice.id, stranger.id, by=staff_by)
    # Nor can the other practice's staff act in ours.
    with pytest.raises(engine.UnknownStaff):
        engine.invite(practice.id, stranger.id, by=f"staff:{other.standard.id}")
    assert row_counts() == before


def test_p2_no_email_is_refused_and_nothing_is_sent(practice, client_factory, staff_by, worker, sink):
    client = client_factory(email=None)
    with pytest.raises(engine.NoEmail) as refused:
        engine.invite(practice.id, client.id, by=staff_by)
    assert refused.value.code == "no_email"
    worker.drain()
    assert sink.messages == []


def test_p2_no_consent_is_refused_and_nothing_is_written(practice, client_factory, staff_by, worker, sink):
    client = client_factory(email="quiet@example.test", consent=False)
    before = row_counts()
    with pytest.raises(engine.NoConsent) as refused:
        engine.invite(practice.id, client.id, by=staff_by)
    assert refused.value.code == "no_consent"
    assert row_counts() == before
    worker.drain()
    assert sink.messages == []


def test_p3_client_created_with_invite_gets_the_welcome_email(practice, staff_by, worker, sink):
    client = engine.create_client(practice.id, "New Client", email="new@example.test", consent=True,
                                  invite=True, by="system:intake")
    worker.drain()
    [mail] = sink.to("new@example.test")
    assert engine.verify_token(practice.id, token_of(mail)).client_id == client.id
    [first] = engine.timeline(practice.id, client_id=client.id)[:1]
    assert first["actor"] == "system:intake"


def test_p3_create_with_invite_refused_creates_no_profile(practice):
    from engine.core.models import Client

    before = Client.select().count()
    with pytest.raises(engine.NoConsent):
        engine.create_client(practice.id, "No Consent", email="nc@example.test", consent=False, invite=True,
                             by="system:booking")
    assert Client.select().count() == before


def test_p4_existing_client_invited_later(practice, client_factory, staff_by, clock, worker, sink):
    client = client_factory(email="later@example.test")
    clock.advance(days=40)
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    assert len(sink.to("later@example.test")) == 1


def test_malformed_email_is_refused(practice):
    for bad in ("no-at-sign", "two@@example.test", "spaces in@example.test", "x@nodot", "a@b.test\r\nBcc: x@y.test"):
        with pytest.raises(engine.MalformedEmail) as refused:
            engine.create_client(practice.id, "Bad Email", email=bad, consent=True, by="system:intake")
        assert refused.value.code == "malformed_email"


def test_at_most_one_live_invitation_per_client(practice, client_factory, staff_by, worker, sink):
    client = client_factory(email="once@example.test")
    first = engine.invite(practice.id, client.id, by=staff_by)
    again = engine.invite(practice.id, client.id, by=staff_by)
    assert again.id == first.id
    worker.drain()
    assert len(sink.to("once@example.test")) == 1


def test_idempotency_key_returns_the_first_result_and_conflicts_on_other_parameters(
    practice, client_factory, staff_by, clock, worker, sink
):
    client = client_factory(email="key@example.test")
    other = client_factory(email="key2@example.test")
    first = engine.invite(practice.id, client.id, by="system:booking", idempotency_key="booking-42")
    repeat = engine.invite(practice.id, client.id, by="system:booking", idempotency_key="booking-42")
    assert repeat.id == first.id
    with pytest.raises(engine.IdempotencyConflict) as refused:
        engine.invite(practice.id, other.id, by="system:booking", idempotency_key="booking-42")
    assert refused.value.code == "idempotency_conflict"
    worker.drain()
    assert len(sink.to("key@example.test")) == 1 and sink.to("key2@example.test") == []
    # After 24 h the key is forgotten and may name a new request.
    clock.advance(hours=24, seconds=1)
    again = engine.invite(practice.id, other.id, by="system:booking", idempotency_key="booking-42")
    assert again.client_id == other.id


def test_idempotency_key_too_long_is_refused(practice, client_factory):
    client = client_factory()
    with pytest.raises(engine.InvalidInput):
        engine.invite(practice.id, client.id, by="system:booking", idempotency_key="k" * 256)


def test_portal_off_refuses_invitations(practice, client_factory, staff_by):
    from engine.core.models import Practice

    client = client_factory()
    Practice.update(portal_enabled=False).where(Practice.id == practice.id).execute()
    with pytest.raises(engine.PortalOff) as refused:
        engine.invite(practice.id, client.id, by=staff_by)
    assert refused.value.code == "portal_off"


def test_already_signed_in_is_refused_with_the_portal_link(practice, client_factory, staff_by, worker):
    client = client_factory()
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    engine.record_sign_in(practice.id, client.id)
    with pytest.raises(engine.AlreadySignedIn) as refused:
        engine.invite(practice.id, client.id, by=staff_by)
    assert refused.value.details["portal_url"] == practice.portal_url


def test_p7_tokens_unknown_wrong_shape_or_other_practice(practice_factory, practice, client_factory, staff_by,
                                                         worker, sink):
    client = client_factory(email="tok@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    token = token_of(sink.to("tok@example.test")[0])
    other = practice_factory("Elsewhere")
    for bad in ("", "short", token + "x", token[:-1] + ("A" if token[-1] != "A" else "B"), "../../etc/passwd"):
        with pytest.raises(engine.TokenUnknown):
            engine.verify_token(practice.id, bad)
    with pytest.raises(engine.TokenUnknown):
        engine.verify_token(other.id, token)  # a link of another practice is not found
    with pytest.raises(engine.InvalidInput):
        engine.redeem_token(practice.id, token, "short")  # password rules before the token is used
    engine.verify_token(practice.id, token)  # still usable


def test_p7_token_expires_with_the_invitation(practice, client_factory, staff_by, clock, worker, sink):
    client = client_factory(email="exp@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    token = token_of(sink.to("exp@example.test")[0])
    clock.advance(days=14, seconds=1)
    with pytest.raises(engine.TokenExpired):
        engine.redeem_token(practice.id, token, "a long enough password")


def test_p17_actor_must_be_named_and_known(practice, client_factory):
    client = client_factory()
    for bad in ("", "staff", "staff:abc", "robot:1", "staff:0"):
        with pytest.raises(engine.InvalidInput):
            engine.invite(practice.id, client.id, by=bad)
    with pytest.raises(engine.UnknownStaff):
        engine.invite(practice.id, client.id, by="staff:424242")
    with pytest.raises(engine.Forbidden) as refused:
        engine.update_practice(practice.id, by=f"staff:{practice.standard.id}", name="Renamed")
    assert refused.value.code == "forbidden"
    renamed = engine.update_practice(practice.id, by=f"staff:{practice.admin.id}", name="Renamed")
    assert renamed.name == "Renamed"


def test_w1_timeline_records_who_did_what(practice, client_factory, staff_by, clock, worker):
    client = client_factory()
    invitation = engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    clock.advance(minutes=5)
    engine.record_sign_in(practice.id, client.id, by="system:portal")
    events = engine.timeline(practice.id, invitation_id=invitation.id)
    assert [(e["actor"], e["action"], e["to_state"]) for e in events] == [
        (staff_by, "invited", None),
        ("worker", "deliver", "sent"),
        ("system:portal", "sign_in", "signed_in"),
    ]
    status = engine.portal_status(practice.id, client.id)
    assert status.status == "signed_in"
    assert status.first_signed_in_at - status.sent_at == timedelta(minutes=5)


def test_p16_practice_created_with_its_own_portal_url(clock):
    practice = engine.create_practice("Own Site", portal_url="https://clinic.example/portal", now=clock.now())
    assert practice.portal_url == "https://clinic.example/portal"
    default = engine.create_practice("Default Site", now=clock.now())
    assert default.portal_url == f"https://portal.test/p/{default.id}"
