"""P8-P12, P14: status, email changes, resend, and disabling one client's portal access."""

from __future__ import annotations

from datetime import timedelta

import pytest

import engine
from engine.core.models import Invitation, PortalAccess
from tests.conftest import RunningWorker, token_of
from workflows.actors import enqueue_steps
from workflows.sweep import sweep


def run_sweep(clock, worker) -> None:
    sweep(clock.now(), enqueue=enqueue_steps, lease_s=60)
    worker.drain()


def actions(practice, **who) -> list[tuple[str, str]]:
    return [(e["actor"], e["action"]) for e in engine.timeline(practice.id, **who)]


def body(mail, kind: str) -> str:
    return mail.get_body((kind,)).get_content().replace("\r\n", "\n")


def invited(practice, client_factory, staff_by, worker, sink, address: str):
    """A client invited by staff, with the invitation email delivered; returns (client, token)."""
    client = client_factory(email=address)
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    return client, token_of(sink.to(address)[-1])


# --- P8: status ---------------------------------------------------------------------------------

def test_p8_status_shows_every_state_with_its_dates(practice, client_factory, staff_by, clock, worker, sink):
    never = client_factory(email="never@example.test")
    waiting, _ = invited(practice, client_factory, staff_by, worker, sink, "waiting@example.test")
    signed, token = invited(practice, client_factory, staff_by, worker, sink, "signed@example.test")
    engine.redeem_token(practice.id, token, "a good long password")
    off, _ = invited(practice, client_factory, staff_by, worker, sink, "off@example.test")
    engine.disable(practice.id, off.id, by=staff_by)
    sink.reply = "550 5.1.1 mailbox unknown"
    bounced = client_factory(email="bounce@example.test")
    engine.invite(practice.id, bounced.id, by=staff_by)
    worker.drain()
    sink.reply = None

    status = {c: engine.portal_status(practice.id, c.id) for c in (never, waiting, signed, off, bounced)}
    assert status[never].status == "never_invited" and status[never].invitation_id is None
    assert status[waiting].status == "invited"
    assert status[waiting].sent_at == clock.now() and status[waiting].expires_at == clock.now() + timedelta(days=14)
    assert status[waiting].portal_email == "waiting@example.test"
    assert status[signed].status == "signed_in" and status[signed].first_signed_in_at == clock.now()
    assert status[off].status == "disabled" and status[off].disabled_at == clock.now()
    assert status[bounced].status == "failed" and "mailbox unknown" in status[bounced].last_error

    clock.advance(days=14, minutes=1)
    run_sweep(clock, worker)
    expired = engine.portal_status(practice.id, waiting.id)
    assert expired.status == "expired" and expired.invitation_state == "expired"


# --- P9: the portal email alone ---------------------------------------------------------------------

def test_p9_change_portal_email_revokes_pending_links_and_resends(practice, client_factory, staff_by, clock,
                                                                   worker, sink):
    client, old_token = invited(practice, client_factory, staff_by, worker, sink, "old@example.test")
    change = engine.change_portal_email(practice.id, client.id, "new@example.test", by=staff_by)
    worker.drain()
    assert (change.previous_email, change.portal_email, change.portal_action) == (
        "old@example.test", "new@example.test", "resent")
    assert change.access_affected and change.invitation_id != change.revoked_invitation_id
    with pytest.raises(engine.TokenRevoked):
        engine.verify_token(practice.id, old_token)
    [mail] = sink.to("new@example.test")
    assert engine.verify_token(practice.id, token_of(mail)).client_id == client.id
    # The primary email is untouched; the status shows the portal address.
    assert engine.portal_status(practice.id, client.id).portal_email == "new@example.test"
    assert Invitation.get_by_id(change.revoked_invitation_id).state == "revoked"
    assert (staff_by, "portal_email_changed") in actions(practice, client_id=client.id)
    from engine.core.models import Client

    assert Client.get_by_id(client.id).primary_email == "old@example.test"
    # Reminders go to the new address only.
    clock.advance(days=3, minutes=1)
    run_sweep(clock, worker)
    assert len(sink.to("old@example.test")) == 1 and len(sink.to("new@example.test")) == 2


def test_p9_signed_in_client_just_changes_address_and_bad_address_changes_nothing(
        practice, client_factory, staff_by, clock, worker, sink):
    client, token = invited(practice, client_factory, staff_by, worker, sink, "in@example.test")
    engine.redeem_token(practice.id, token, "a good long password")
    with pytest.raises(engine.MalformedEmail):
        engine.change_portal_email(practice.id, client.id, "not an address", by=staff_by)
    assert engine.portal_status(practice.id, client.id).portal_email == "in@example.test"
    change = engine.change_portal_email(practice.id, client.id, "login@example.test", by=staff_by)
    worker.drain()
    assert (change.portal_action, change.invitation_id) == ("none", None)
    assert sink.to("login@example.test") == []
    assert engine.portal_status(practice.id, client.id).status == "signed_in"


# --- P10: the primary email ----------------------------------------------------------------------------

def test_p10_primary_change_reports_affected_access_and_keep_leaves_portal_email(
        practice, client_factory, staff_by, clock, worker, sink):
    client, token = invited(practice, client_factory, staff_by, worker, sink, "first@example.test")
    change = engine.change_primary_email(practice.id, client.id, "second@example.test", by=staff_by)
    worker.drain()
    assert change.access_affected and change.portal_action == "keep"
    assert change.portal_email == "first@example.test"
    # Declining changed nothing about portal access: same address, same working link, no email.
    assert engine.portal_status(practice.id, client.id).portal_email == "first@example.test"
    assert engine.verify_token(practice.id, token).client_id == client.id
    assert sink.to("second@example.test") == []
    assert PortalAccess.get_by_id(client.id).portal_email == "first@example.test"


def test_p10_disable_and_resend_revokes_old_access_and_invites_new_address(
        practice, client_factory, staff_by, clock, worker, sink):
    client, token = invited(practice, client_factory, staff_by, worker, sink, "was@example.test")
    engine.redeem_token(practice.id, token, "a good long password")
    engine.request_password_reset(practice.id, client.id, by="system:portal")
    worker.drain()
    reset_token = token_of(sink.to("was@example.test")[-1])

    change = engine.change_primary_email(practice.id, client.id, "now@example.test", by=staff_by,
                                         portal_action="disable_and_resend")
    worker.drain()
    assert change.access_affected and change.portal_action == "disable_and_resend"
    assert change.portal_email == "now@example.test" and change.invitation_id is not None
    with pytest.raises(engine.TokenRevoked):
        engine.verify_token(practice.id, reset_token)
    [mail] = sink.to("now@example.test")
    new_token = token_of(mail)
    assert engine.portal_status(practice.id, client.id).status == "invited"
    assert PortalAccess.get_by_id(client.id).password_hash is None
    assert engine.redeem_token(practice.id, new_token, "another long password") == client.id
    assert (staff_by, "access_revoked") in actions(practice, client_id=client.id)


def test_p10_primary_change_without_access_is_not_affected(practice, client_factory, staff_by, clock, worker,
                                                           sink):
    client = client_factory(email="plain@example.test")
    change = engine.change_primary_email(practice.id, client.id, "moved@example.test", by=staff_by)
    assert not change.access_affected and change.portal_email == "plain@example.test"
    # The portal email still follows the primary one: a later invitation goes to the new address.
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    assert len(sink.to("moved@example.test")) == 1
    with pytest.raises(engine.InvalidInput):
        engine.change_primary_email(practice.id, client.id, "x@example.test", by=staff_by, portal_action="maybe")


# --- P11, P12: resend -----------------------------------------------------------------------------------

def test_p11_resend_revokes_earlier_links(practice, client_factory, staff_by, clock, worker, sink):
    client, first = invited(practice, client_factory, staff_by, worker, sink, "again@example.test")
    clock.advance(days=3, minutes=1)
    run_sweep(clock, worker)  # reminder 1, with a second link
    second = token_of(sink.to("again@example.test")[-1])
    clock.advance(days=2)

    message = "Hi <b>Rosa</b>,\nyour {{ 7*7 }} forms are ready."
    new = engine.resend(practice.id, client.id, by=staff_by, message=message)
    worker.drain()
    mail = sink.to("again@example.test")[-1]
    for old in (first, second):
        with pytest.raises(engine.TokenRevoked):
            engine.verify_token(practice.id, old)
    assert engine.verify_token(practice.id, token_of(mail)).client_id == client.id
    # The message is plain text: literal in the text part, escaped in the HTML part.
    assert "Hi <b>Rosa</b>,\nyour {{ 7*7 }} forms are ready." in body(mail, "plain")
    html = body(mail, "html")
    assert "&lt;b&gt;Rosa&lt;/b&gt;" in html and "<b>Rosa" not in html
    # A full new lifetime and a fresh reminder schedule.
    status = engine.portal_status(practice.id, client.id)
    assert status.invitation_id == new.id and status.reminders_sent == 0
    assert status.expires_at == clock.now() + timedelta(days=14)
    assert status.next_action_at == clock.now() + timedelta(days=3)
    assert (staff_by, "resent") in actions(practice, invitation_id=new.id)


def test_p11_resend_after_expiry_gives_a_working_link(practice, client_factory, staff_by, clock, worker, sink):
    client, _ = invited(practice, client_factory, staff_by, worker, sink, "late@example.test")
    clock.advance(days=15)
    run_sweep(clock, worker)
    assert engine.portal_status(practice.id, client.id).status == "expired"
    engine.resend(practice.id, client.id, by=staff_by)
    worker.drain()
    assert engine.verify_token(practice.id, token_of(sink.to("late@example.test")[-1])).client_id == client.id
    assert engine.portal_status(practice.id, client.id).status == "invited"


def test_p11_bad_message_or_never_invited_is_refused_and_changes_nothing(practice, client_factory, staff_by,
                                                                          clock, worker, sink):
    client, token = invited(practice, client_factory, staff_by, worker, sink, "keep@example.test")
    before = actions(practice, client_id=client.id)
    for bad in ("x" * 2001, "ring \x07 the bell"):
        with pytest.raises(engine.InvalidInput) as refused:
            engine.resend(practice.id, client.id, by=staff_by, message=bad)
        assert refused.value.code == "invalid_input"
    assert actions(practice, client_id=client.id) == before
    assert engine.verify_token(practice.id, token).client_id == client.id
    fresh = client_factory()
    with pytest.raises(engine.NotInvited):
        engine.resend(practice.id, fresh.id, by=staff_by)


@pytest.mark.parametrize("breaks", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_p11_resend_message_keeps_line_breaks_as_lf(practice, client_factory, staff_by, clock, worker, sink,
                                                    breaks):
    client, _ = invited(practice, client_factory, staff_by, worker, sink, "lines@example.test")
    resent = engine.resend(practice.id, client.id, by=staff_by, message=f"  Dear Rosa,{breaks}{breaks}See you{breaks}")
    assert resent.custom_message == "Dear Rosa,\n\nSee you"
    worker.drain()
    mail = sink.to("lines@example.test")[-1]
    assert "Dear Rosa,\n\nSee you" in body(mail, "plain")
    assert "Dear Rosa,<br>" in body(mail, "html").replace("<br />", "<br>").replace("<br/>", "<br>")


@pytest.mark.parametrize("bad", ["tab\there", "vertical\x0btab", "form\x0cfeed", "nul\x00", "next\x85line",
                                 "line\u2028separator", "bidi\u202eoverride", "esc\x1b[31m"])
def test_p11_resend_message_refuses_other_control_characters(practice, client_factory, staff_by, clock, worker,
                                                             sink, bad):
    client, token = invited(practice, client_factory, staff_by, worker, sink, "ctl@example.test")
    before = actions(practice, client_id=client.id)
    with pytest.raises(engine.InvalidInput) as refused:
        engine.resend(practice.id, client.id, by=staff_by, message=bad)
    assert refused.value.details["field"] == "message" and "line breaks are fine" in refused.value.message
    assert actions(practice, client_id=client.id) == before
    assert engine.verify_token(practice.id, token).client_id == client.id


def test_p12_no_resend_after_sign_in_share_the_portal_link_instead(practice, client_factory, staff_by, clock,
                                                                   worker, sink):
    client, token = invited(practice, client_factory, staff_by, worker, sink, "signed@example.test")
    engine.redeem_token(practice.id, token, "a good long password")
    before = actions(practice, client_id=client.id)
    with pytest.raises(engine.AlreadySignedIn) as refused:
        engine.resend(practice.id, client.id, by=staff_by, message="come back")
    assert refused.value.code == "already_signed_in"
    assert refused.value.details["portal_url"] == practice.portal_url
    assert engine.portal_link(practice.id, by=staff_by).portal_url == practice.portal_url
    worker.drain()
    assert len(sink.to("signed@example.test")) == 1
    assert actions(practice, client_id=client.id) == before


# --- P14: disable and re-enable ---------------------------------------------------------------------------

def test_p14_disable_kills_links_and_stops_follow_ups(practice, client_factory, staff_by, clock, worker, sink):
    client, token = invited(practice, client_factory, staff_by, worker, sink, "stop@example.test")
    status = engine.disable(practice.id, client.id, by=staff_by)
    assert status.status == "disabled" and status.disabled_at == clock.now()
    with pytest.raises(engine.TokenRevoked):
        engine.verify_token(practice.id, token)
    with pytest.raises(engine.TokenRevoked):
        engine.redeem_token(practice.id, token, "a good long password")
    with pytest.raises(engine.AccessDisabled):
        engine.record_sign_in(practice.id, client.id)
    clock.advance(days=20)
    run_sweep(clock, worker)
    assert len(sink.to("stop@example.test")) == 1
    timeline = actions(practice, client_id=client.id)
    assert (staff_by, "revoke") in timeline and (staff_by, "access_disabled") in timeline
    # Disabling again changes nothing.
    assert engine.disable(practice.id, client.id, by=staff_by).disabled_at == status.disabled_at


def test_p14_disable_while_the_step_is_queued_sends_nothing(practice, client_factory, staff_by, clock, broker,
                                                            redis_client, sink):
    client = client_factory(email="queued@example.test")
    # Given an invitation whose step is in the queue, with no worker running yet
    invitation = engine.invite(practice.id, client.id, by=staff_by)
    assert redis_client.hlen("dramatiq:invitations.msgs") == 1
    # When staff disable the client, then a worker takes the message
    engine.disable(practice.id, client.id, by=staff_by)
    running = RunningWorker(broker)
    running.worker.start()
    try:
        running.drain()
    finally:
        running.worker.stop()
    # Then nothing was sent
    assert redis_client.hlen("dramatiq:invitations.msgs") == 0
    assert sink.messages == []
    assert [a for _, a in actions(practice, invitation_id=invitation.id)] == ["invited", "revoke", "access_disabled"]


def test_p14_inviting_again_re_enables(practice, client_factory, staff_by, clock, worker, sink):
    client, _ = invited(practice, client_factory, staff_by, worker, sink, "back@example.test")
    engine.disable(practice.id, client.id, by=staff_by)
    clock.advance(days=1)
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    status = engine.portal_status(practice.id, client.id)
    assert status.status == "invited" and status.disabled_at is None
    token = token_of(sink.to("back@example.test")[-1])
    assert engine.redeem_token(practice.id, token, "a good long password") == client.id
    assert (staff_by, "access_enabled") in actions(practice, client_id=client.id)
