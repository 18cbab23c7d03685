"""P15, P16: the practice-wide portal switch, and the portal link and website widget."""

from __future__ import annotations

from datetime import timedelta

import pytest

import engine
from engine.core.models import AuditEvent, Token
from tests.conftest import token_of
from workflows.actors import enqueue_steps
from workflows.sweep import sweep


def run_sweep(clock, worker) -> None:
    sweep(clock.now(), enqueue=enqueue_steps, lease_s=60)
    worker.drain()


def test_p15_portal_off_blocks_sign_in_links_and_emails(practice, client_factory, staff_by, clock, worker, sink):
    admin = f"staff:{practice.admin.id}"
    client = client_factory(email="blocked@example.test")
    invitation = engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    token = token_of(sink.to("blocked@example.test")[0])

    switch = engine.set_portal_enabled(practice.id, False, by=admin)
    assert switch.changed and not switch.portal_enabled
    for call in (
        lambda: engine.record_sign_in(practice.id, client.id),
        lambda: engine.verify_token(practice.id, token),
        lambda: engine.redeem_token(practice.id, token, "a good long password"),
        lambda: engine.invite(practice.id, client_factory().id, by=staff_by),
        lambda: engine.resend(practice.id, client.id, by=staff_by),
    ):
        with pytest.raises(engine.PortalOff) as refused:
            call()
        assert refused.value.code == "portal_off"
    # A step nudged directly while the portal is off sends nothing either.
    clock.advance(days=4)
    enqueue_steps([invitation.id])
    run_sweep(clock, worker)
    assert len(sink.messages) == 1
    assert engine.set_portal_enabled(practice.id, False, by=admin).changed is False
    assert (admin, "portal_switched_off") in [(e.actor, e.action) for e in AuditEvent.select()]


def test_p15_follow_ups_pause_then_resume_shifted_in_the_send_window_without_a_burst(
        practice, client_factory, staff_by, clock, worker, sink):
    admin = f"staff:{practice.admin.id}"
    t0 = clock.now()  # a Tuesday, 10:00 UTC; the send window is 09:00-18:00 UTC
    client = client_factory(email="paused@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    first_link = token_of(sink.to("paused@example.test")[0])

    # Off for four and a half days, over the day-3 reminder.
    clock.set(t0 + timedelta(days=1))
    engine.set_portal_enabled(practice.id, False, by=admin)
    clock.set(t0 + timedelta(days=5))
    run_sweep(clock, worker)
    assert len(sink.to("paused@example.test")) == 1
    clock.set(t0 + timedelta(days=5, hours=12))  # 22:00
    switch = engine.set_portal_enabled(practice.id, True, by=admin)
    assert switch.paused_s == int(timedelta(days=4, hours=12).total_seconds()) and switch.shifted_invitations == 1

    # Nothing goes at once: the reminder moved by the pause, to 22:00 three days after the pause...
    status = engine.portal_status(practice.id, client.id)
    assert status.next_action_at == t0 + timedelta(days=7, hours=12)
    assert status.expires_at == t0 + timedelta(days=18, hours=12)
    run_sweep(clock, worker)
    assert len(sink.to("paused@example.test")) == 1
    # ...and 22:00 is outside the send window: it waits for 09:00 the next morning.
    clock.set(t0 + timedelta(days=7, hours=12, minutes=1))
    run_sweep(clock, worker)
    assert len(sink.to("paused@example.test")) == 1
    assert engine.portal_status(practice.id, client.id).next_action_at == t0 + timedelta(days=8, hours=-1)
    clock.set(t0 + timedelta(days=8, hours=-1, minutes=1))
    run_sweep(clock, worker)
    assert len(sink.to("paused@example.test")) == 2
    # No burst: the second reminder keeps its own cadence (day 7 + the pause = 22:00, so the
    # next morning), not right away.
    run_sweep(clock, worker)
    assert len(sink.to("paused@example.test")) == 2
    assert engine.portal_status(practice.id, client.id).next_action_at == t0 + timedelta(days=12, hours=-1)
    # The first link lives as long as the invitation: its expiry moved with the pause.
    clock.set(t0 + timedelta(days=16))
    assert engine.verify_token(practice.id, first_link).client_id == client.id
    assert Token.select().where(Token.expires_at == t0 + timedelta(days=18, hours=12)).count() >= 1


def test_p15_only_admins_switch_the_portal(practice, staff_by, clock):
    with pytest.raises(engine.Forbidden) as refused:
        engine.set_portal_enabled(practice.id, False, by=staff_by)
    assert refused.value.code == "forbidden"
    with pytest.raises(engine.Forbidden):
        engine.set_portal_enabled(practice.id, False, by="system:booking")
    with pytest.raises(engine.InvalidInput):
        engine.set_portal_enabled(practice.id, "no", by=f"staff:{practice.admin.id}")  # type: ignore[arg-type]
    assert engine.portal_link(practice.id, by=staff_by).portal_enabled is True


def test_p16_portal_link_and_an_escaped_website_widget(practice_factory, clock):
    practice = practice_factory('Dr. "Paws" <Vet> & Co')
    by = f"staff:{practice.standard.id}"
    engine.update_practice(practice.id, by=f"staff:{practice.admin.id}", portal_url="https://portal.example.test/happy")
    link = engine.portal_link(practice.id, by=by)
    assert link.portal_url == "https://portal.example.test/happy"
    assert link.widget_html.startswith("<a ") and link.widget_html.endswith(">Client portal</a>")
    assert 'href="https://portal.example.test/happy"' in link.widget_html
    assert "&#34;Paws&#34; &lt;Vet&gt; &amp; Co" in link.widget_html and "<Vet>" not in link.widget_html
    assert "<script" not in link.widget_html
    custom = engine.portal_link(practice.id, by=by, label="Book & pay <online>")
    assert custom.widget_html.endswith(">Book &amp; pay &lt;online&gt;</a>")
    with pytest.raises(engine.InvalidInput):
        engine.portal_link(practice.id, by=by, label="x" * 61)
    # Other systems may read it too (a website builder); a practice's default URL is ours.
    other = practice_factory("Plain Vets")
    assert engine.portal_link(other.id, by="system:website").portal_url == f"https://portal.test/p/{other.id}"
