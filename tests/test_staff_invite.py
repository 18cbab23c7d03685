"""P3, P4, P5: inviting at creation, from other systems, later, and with a document share."""

from __future__ import annotations

import pytest

import engine
from engine.core.models import Invitation
from tests.conftest import links, token_of
from workflows.actors import enqueue_steps
from workflows.sweep import sweep


def actions(practice, **who) -> list[tuple[str, str]]:
    return [(e["actor"], e["action"]) for e in engine.timeline(practice.id, **who)]


def test_p3_new_client_is_invited_as_the_profile_is_created(practice, staff_by, clock, worker, sink):
    # When staff create a client and ask for the invitation at once
    client = engine.create_client(practice.id, "Nora Field", email="nora@example.test", consent=True,
                                  invite=True, by=staff_by)
    worker.drain()
    # Then the welcome email arrives with a sign-in link and a set-password link
    [mail] = sink.to("nora@example.test")
    assert set(links(mail)) == {"sign_in", "set_password"}
    assert engine.verify_token(practice.id, token_of(mail)).client_id == client.id
    assert (staff_by, "client_created") in actions(practice, client_id=client.id)
    assert engine.portal_status(practice.id, client.id).status == "invited"


def test_p3_intake_form_and_booking_create_and_invite_as_system_actors(practice, clock, worker, sink):
    intake = engine.create_client(practice.id, "Ivy Intake", email="ivy@example.test", consent=True,
                                  invite=True, by="system:intake")
    booking = engine.create_client(practice.id, "Ben Booking", email="ben@example.test", consent=True,
                                   invite=True, by="system:booking", idempotency_key="booking-77")
    worker.drain()
    assert len(sink.to("ivy@example.test")) == 1
    assert len(sink.to("ben@example.test")) == 1
    # The timeline names the system that asked.
    assert ("system:intake", "invited") in actions(practice, client_id=intake.id)
    assert ("system:booking", "invited") in actions(practice, client_id=booking.id)


def test_p3_intake_without_consent_creates_nothing(practice, clock, worker, sink):
    with pytest.raises(engine.NoConsent) as refused:
        engine.create_client(practice.id, "No Consent", email="nc@example.test", consent=False, invite=True,
                             by="system:intake")
    assert refused.value.code == "no_consent"
    worker.drain()
    assert sink.messages == []
    assert engine.needs_attention(practice.id, by="system:intake").total == 0
    assert engine.pending(practice.id, by="system:intake").total == 0


def test_p4_existing_client_is_invited_once_however_often_asked(practice, client_factory, staff_by, clock,
                                                                worker, sink):
    client = client_factory(email="later@example.test")
    clock.advance(days=40)
    first = engine.invite(practice.id, client.id, by=staff_by)
    # Asked again by staff and by another system: the same live invitation, no second email.
    again = engine.invite(practice.id, client.id, by=staff_by)
    booking = engine.invite(practice.id, client.id, by="system:booking")
    worker.drain()
    assert first.id == again.id == booking.id
    assert len(sink.to("later@example.test")) == 1
    assert Invitation.select().where(Invitation.client == client.id).count() == 1


def test_p4_inviting_a_signed_in_client_is_refused_with_a_clear_code(practice, client_factory, staff_by, clock,
                                                                      worker, sink):
    client = client_factory(email="in@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    engine.redeem_token(practice.id, token_of(sink.to("in@example.test")[0]), "a good long password")
    before = actions(practice, client_id=client.id)
    with pytest.raises(engine.AlreadySignedIn) as refused:
        engine.invite(practice.id, client.id, by=staff_by)
    assert refused.value.code == "already_signed_in"
    assert refused.value.details["portal_url"] == practice.portal_url
    assert actions(practice, client_id=client.id) == before


def test_p1_client_of_another_practice_is_unknown(practice_factory, practice, client_factory, staff_by, clock):
    other = practice_factory("Other Clinic")
    theirs = client_factory(other)
    with pytest.raises(engine.UnknownClient) as refused:
        engine.invite(practice.id, theirs.id, by=staff_by)
    assert refused.value.code == "unknown_client"
    with pytest.raises(engine.UnknownClient):
        engine.share_documents(practice.id, theirs.id, by="system:documents")


# --- P5: sharing documents grants access -----------------------------------------------------

def test_p5_share_invites_a_client_without_access_saying_documents_wait(practice, client_factory, clock,
                                                                         worker, sink):
    client = client_factory(email="docs@example.test")
    result = engine.share_documents(practice.id, client.id, by="system:documents", documents=3)
    worker.drain()
    assert result.invited and result.outcome == "invited"
    [mail] = sink.to("docs@example.test")
    text = mail.get_body(preferencelist=("plain",)).get_content()
    assert "Documents have been shared with you" in text
    assert "Documents have been shared with you" in mail.get_body(preferencelist=("html",)).get_content()
    assert engine.verify_token(practice.id, token_of(mail)).client_id == client.id
    timeline = actions(practice, invitation_id=result.invitation_id)
    assert ("system:documents", "invited") in timeline
    assert ("system:documents", "documents_shared") in timeline


def test_p5_share_with_a_signed_in_client_sends_no_invitation(practice, client_factory, staff_by, clock,
                                                              worker, sink):
    client = client_factory(email="has@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    engine.record_sign_in(practice.id, client.id)
    result = engine.share_documents(practice.id, client.id, by=staff_by)
    worker.drain()
    assert (result.invited, result.outcome, result.invitation_id) == (False, "has_access", None)
    assert len(sink.to("has@example.test")) == 1
    assert (staff_by, "documents_shared") in actions(practice, client_id=client.id)


def test_p5_share_with_a_pending_invitation_sends_no_second_one_and_reminders_mention_it(
        practice, client_factory, staff_by, clock, worker, sink):
    client = client_factory(email="wait@example.test")
    invitation = engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    result = engine.share_documents(practice.id, client.id, by="system:documents")
    worker.drain()
    assert (result.invited, result.outcome, result.invitation_id) == (False, "already_invited", invitation.id)
    assert len(sink.to("wait@example.test")) == 1
    # The first reminder says documents are waiting.
    clock.advance(days=3, minutes=1)
    sweep(clock.now(), enqueue=enqueue_steps, lease_s=60)
    worker.drain()
    reminder = sink.to("wait@example.test")[1]
    assert "Documents have been shared with you" in reminder.get_body(preferencelist=("plain",)).get_content()


def test_p5_share_is_refused_for_disabled_access_and_changes_nothing(practice, client_factory, staff_by, clock,
                                                                     worker, sink):
    client = client_factory(email="off@example.test")
    engine.disable(practice.id, client.id, by=staff_by)
    with pytest.raises(engine.AccessDisabled):
        engine.share_documents(practice.id, client.id, by="system:documents")
    worker.drain()
    assert sink.messages == []
    assert engine.portal_status(practice.id, client.id).status == "disabled"
    with pytest.raises(engine.InvalidInput):
        engine.share_documents(practice.id, client.id, by="system:documents", documents=0)
