"""W1-W3: the invitation workflow end to end, on a real worker, Redis, database and SMTP sink."""

from __future__ import annotations

from datetime import timedelta

import pytest

import engine
from tests.conftest import both_brokers, links, token_of
from workflows.actors import advance_invitation, enqueue_steps
from workflows.sweep import sweep

pytestmark = both_brokers()  # Redis on each database, and RabbitMQ


def run_sweep(clock, worker) -> None:
    sweep(clock.now(), enqueue=enqueue_steps, lease_s=60)
    worker.drain()


def test_w1_invite_remind_sign_in_then_nothing_more(practice, client_factory, staff_by, clock, worker, sink):
    # Given a client with an email and consent
    client = client_factory(name="Rosa Diaz", email="rosa@example.test")
    # When staff invite her
    invitation = engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    # Then one invitation email arrives, with working links
    [mail] = sink.to("rosa@example.test")
    assert practice.name in mail["Subject"] or practice.name in mail["From"]
    found = links(mail)
    assert found["sign_in"] == practice.portal_url
    info = engine.verify_token(practice.id, token_of(mail))
    assert info.client_id == client.id
    assert engine.portal_status(practice.id, client.id).status == "invited"

    # When three days pass and the sweep runs, a reminder goes
    clock.advance(days=3, minutes=1)
    run_sweep(clock, worker)
    assert len(sink.to("rosa@example.test")) == 2
    assert engine.portal_status(practice.id, client.id).invitation_state == "reminded"

    # When she signs in, the workflow ends
    engine.record_sign_in(practice.id, client.id)
    assert engine.portal_status(practice.id, client.id).status == "signed_in"

    # Then a month later, nothing else is sent
    clock.advance(days=30)
    run_sweep(clock, worker)
    assert len(sink.to("rosa@example.test")) == 2
    actions = [e["action"] for e in engine.timeline(practice.id, invitation_id=invitation.id)]
    assert actions == ["invited", "deliver", "remind", "sign_in"]


def test_w1_unused_invitation_expires_and_its_link_dies(practice, client_factory, staff_by, clock, worker, sink):
    client = client_factory(email="late@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    first = token_of(sink.to("late@example.test")[0])
    # Two reminders at days 3 and 7, then expiry at day 14.
    clock.set(engine.portal_status(practice.id, client.id).sent_at + timedelta(days=3, minutes=1))
    run_sweep(clock, worker)
    clock.set(engine.portal_status(practice.id, client.id).sent_at + timedelta(days=7, minutes=1))
    run_sweep(clock, worker)
    assert len(sink.to("late@example.test")) == 3
    clock.set(engine.portal_status(practice.id, client.id).sent_at + timedelta(days=14, minutes=1))
    run_sweep(clock, worker)
    status = engine.portal_status(practice.id, client.id)
    assert status.status == "expired"
    assert len(sink.to("late@example.test")) == 3
    with pytest.raises(engine.TokenExpired) as refused:
        engine.verify_token(practice.id, first)
    assert refused.value.code == "token_expired"


def test_w1_redeeming_the_link_signs_in_and_stops_reminders(practice, client_factory, staff_by, clock, worker, sink):
    client = client_factory(email="pw@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    token = token_of(sink.to("pw@example.test")[0])
    # Opening the link twice changes nothing; redeeming it once sets the password.
    engine.verify_token(practice.id, token)
    engine.verify_token(practice.id, token)
    assert engine.redeem_token(practice.id, token, "correct horse battery") == client.id
    with pytest.raises(engine.TokenUsed):
        engine.redeem_token(practice.id, token, "another password!")
    clock.advance(days=20)
    run_sweep(clock, worker)
    assert len(sink.to("pw@example.test")) == 1
    assert engine.portal_status(practice.id, client.id).status == "signed_in"


def test_w2_redelivered_step_sends_one_email(practice, client_factory, staff_by, clock, worker, sink):
    client = client_factory(email="twice@example.test")
    invitation = engine.invite(practice.id, client.id, by=staff_by)
    # The same nudge delivered again and again, alone and in batches, by concurrent threads.
    for _ in range(3):
        advance_invitation.send(invitation.id)
    enqueue_steps([invitation.id, invitation.id])
    worker.drain()
    assert len(sink.to("twice@example.test")) == 1
    clock.advance(days=3, minutes=5)
    enqueue_steps([invitation.id] * 4)
    worker.drain()
    assert len(sink.to("twice@example.test")) == 2
    message_ids = {m["Message-ID"] for m in sink.to("twice@example.test")}
    assert len(message_ids) == 2


def test_w1_reminder_due_at_night_waits_for_the_send_window(practice_factory, client_factory, clock, worker, sink):
    # A practice in New York; the invitation goes out at 23:30 local time.
    practice = practice_factory("Night Owl Vets", time_zone="America/New_York", send_window=(9 * 60, 18 * 60))
    clock.set(clock.now().replace(hour=4, minute=30))  # 23:30 in New York (EST, UTC-5)
    client = client_factory(practice, email="owl@example.test")
    engine.invite(practice.id, client.id, by=f"staff:{practice.standard.id}")
    worker.drain()
    assert len(sink.to("owl@example.test")) == 1
    status = engine.portal_status(practice.id, client.id)
    # The first reminder would be due at 23:30 local three days later: it waits until 09:00.
    assert status.next_action_at.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York")).hour == 9
    clock.set(status.sent_at + timedelta(days=3, minutes=1))  # 23:31 local: not yet
    run_sweep(clock, worker)
    assert len(sink.to("owl@example.test")) == 1
    clock.set(status.next_action_at + timedelta(seconds=1))
    run_sweep(clock, worker)
    assert len(sink.to("owl@example.test")) == 2


def test_w3_lost_message_is_recovered_by_the_sweep_after_the_lease(practice, client_factory, staff_by, clock, broker):
    from workflows.sweep import claim_due

    client = client_factory(email="lost@example.test")
    broker.flush_all()
    invitation = engine.invite(practice.id, client.id, by=staff_by)
    broker.flush_all()  # the nudge is lost
    # The message never reached a worker. Before the lease runs out the sweep leaves it alone;
    assert claim_due(clock.now(), limit=10, lease_s=60) == []
    # after it, the sweep claims it again.
    clock.advance(seconds=61)
    assert claim_due(clock.now(), limit=10, lease_s=60) == [invitation.id]
    assert claim_due(clock.now(), limit=10, lease_s=60) == []

