"""P17 views: needs attention, pending, scheduled; each scoped to one practice and paged."""

from __future__ import annotations

from datetime import timedelta

import pytest

import engine
from engine.core.db import write
from engine.operations.invitations import open_invitation
from workflows.actors import enqueue_steps
from workflows.sweep import sweep


def run_sweep(clock, worker) -> None:
    sweep(clock.now(), enqueue=enqueue_steps, lease_s=60)
    worker.drain()


def test_p17_needs_attention_lists_failed_and_expired_not_reinvited(practice_factory, practice, client_factory,
                                                                     staff_by, clock, worker, sink):
    t0 = clock.now()
    sink.reply = "550 5.1.1 no such mailbox"
    bounced = client_factory(name="Bo Bounce", email="bounce@example.test")
    engine.invite(practice.id, bounced.id, by=staff_by)
    worker.drain()
    sink.reply = None
    expired = client_factory(name="Ed Expired", email="expired@example.test")
    reinvited = client_factory(email="again@example.test")
    waiting = client_factory(email="waiting@example.test")
    for client in (expired, reinvited):
        engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    other = practice_factory("Elsewhere Vets")  # its trouble is not ours to see
    sink.reply = "550 5.1.1 no such mailbox"
    engine.invite(other.id, client_factory(other).id, by=f"staff:{other.standard.id}")
    worker.drain()
    sink.reply = None
    clock.advance(days=14, minutes=1)
    run_sweep(clock, worker)
    engine.resend(practice.id, reinvited.id, by=staff_by)
    engine.invite(practice.id, waiting.id, by=staff_by)
    worker.drain()

    page = engine.needs_attention(practice.id, by=staff_by)
    assert page.total == 2
    assert [(i.reason, i.client_id, i.client_name, i.email) for i in page.items] == [
        ("expired", expired.id, "Ed Expired", "expired@example.test"),
        ("failed", bounced.id, "Bo Bounce", "bounce@example.test"),
    ]
    assert page.items[0].at == t0 + timedelta(days=14, minutes=1)
    assert page.items[1].at == t0 and "no such mailbox" in page.items[1].last_error
    second = engine.needs_attention(practice.id, by=staff_by, limit=1, offset=1)
    assert [i.client_id for i in second.items] == [bounced.id] and second.total == 2
    # Re-inviting takes a client off the list.
    engine.resend(practice.id, bounced.id, by=staff_by)
    assert [i.client_id for i in engine.needs_attention(practice.id, by=staff_by).items] == [expired.id]
    as_json = engine.needs_attention(practice.id, by="system:dashboard").to_dict()
    assert as_json["items"][0]["at"] == (t0 + timedelta(days=14, minutes=1)).isoformat()


def test_p17_pending_shows_days_waiting_and_reminders_sent(practice_factory, practice, client_factory, staff_by,
                                                           clock, worker, sink):
    first = client_factory(name="Ann Early", email="early@example.test")
    engine.invite(practice.id, first.id, by=staff_by)
    worker.drain()
    clock.advance(days=2)
    second = client_factory(name="Bob Later", email="later@example.test")
    engine.invite(practice.id, second.id, by=staff_by)
    done = client_factory(email="done@example.test")
    engine.invite(practice.id, done.id, by=staff_by)
    worker.drain()
    engine.record_sign_in(practice.id, done.id)
    other = practice_factory("Elsewhere Vets")
    engine.invite(other.id, client_factory(other).id, by=f"staff:{other.standard.id}")
    clock.advance(days=2)
    run_sweep(clock, worker)  # day 4: the first client's reminder 1 went

    page = engine.pending(practice.id, by=staff_by)
    assert page.total == 2
    rows = [(i.client_id, i.client_name, i.email, i.state, i.days_waiting, i.reminders_sent) for i in page.items]
    assert rows == [
        (first.id, "Ann Early", "early@example.test", "reminded", 4, 1),
        (second.id, "Bob Later", "later@example.test", "sent", 2, 0),
    ]
    assert engine.pending(practice.id, by=staff_by, offset=1).items[0].client_id == second.id
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
        with pytest.raises(engine.InvalidInput):
            engine.pending(practice.id, by=staff_by, **bad)


def test_p17_scheduled_shows_what_goes_next_and_when_in_utc_and_local_time(practice_factory, client_factory,
                                                                          clock, worker, sink):
    practice = practice_factory("Berlin Paws", time_zone="Europe/Berlin")  # window 09:00-18:00 Berlin
    by = f"staff:{practice.standard.id}"
    t0 = clock.now()  # 10:00 UTC = 11:00 in Berlin
    near_expiry = client_factory(practice, email="a@example.test")
    engine.invite(practice.id, near_expiry.id, by=by)
    worker.drain()
    clock.set(t0 + timedelta(days=3, minutes=1))
    run_sweep(clock, worker)
    clock.set(t0 + timedelta(days=6))
    reminder_next = client_factory(practice, email="b@example.test")
    engine.invite(practice.id, reminder_next.id, by=by)
    worker.drain()
    clock.set(t0 + timedelta(days=7, minutes=1))
    run_sweep(clock, worker)  # the first client's second and last reminder
    queued = client_factory(practice, email="c@example.test")
    with write():  # an invitation whose nudge no worker has taken yet
        open_invitation(practice, queued, actor=by, now=clock.now())

    page = engine.scheduled(practice.id, by=by)
    got = [(i.client_id, i.next_step, i.reminder_number, i.due_at, i.due_local) for i in page.items]
    assert got == [
        (queued.id, "invitation", None, clock.now(), "2026-12-08T11:01:00+01:00"),
        (reminder_next.id, "reminder", 1, t0 + timedelta(days=9), "2026-12-10T11:00:00+01:00"),
        (near_expiry.id, "expiry", None, t0 + timedelta(days=14), "2026-12-15T11:00:00+01:00"),
    ]
    assert not any(i.paused for i in page.items)
    engine.set_portal_enabled(practice.id, False, by=f"staff:{practice.admin.id}")
    assert all(i.paused for i in engine.scheduled(practice.id, by=by).items)


def test_p17_views_are_role_checked_and_scoped(practice_factory, practice, clock):
    other = practice_factory("Elsewhere Vets")
    for view in (engine.needs_attention, engine.pending, engine.scheduled):
        with pytest.raises(engine.UnknownStaff) as refused:
            view(practice.id, by=f"staff:{other.standard.id}")
        assert refused.value.code == "unknown_staff"
        with pytest.raises(engine.InvalidInput):
            view(practice.id, by="anyone")
        assert view(practice.id, by="system:dashboard").total == 0
