"""Mass invitation (admin): everyone eligible, in batches, idempotent, with a report of skips."""

from __future__ import annotations

from datetime import timedelta

import pytest

import engine
from engine.core.models import Invitation, PortalAccess
from tests.conftest import token_of
from workflows.actors import enqueue_steps
from workflows.sweep import sweep


@pytest.fixture
def crowd(practice, client_factory, staff_by, clock, worker, sink):
    """Thirteen clients: eight who can be invited and one of each reason to skip."""
    eligible = [client_factory(email=f"mass{i}@example.test") for i in range(7)]
    expired = client_factory(email="expired@example.test")
    engine.invite(practice.id, expired.id, by=staff_by)
    worker.drain()
    clock.advance(days=15)
    sweep(clock.now(), enqueue=enqueue_steps, lease_s=60)
    worker.drain()
    assert engine.portal_status(practice.id, expired.id).status == "expired"
    skipped = {
        "no_email": client_factory(email=None),
        "no_consent": client_factory(consent=False),
        "live": client_factory(),
        "signed_in": client_factory(),
        "disabled": client_factory(),
    }
    engine.invite(practice.id, skipped["live"].id, by=staff_by)
    engine.invite(practice.id, skipped["signed_in"].id, by=staff_by)
    worker.drain()
    engine.record_sign_in(practice.id, skipped["signed_in"].id)
    engine.disable(practice.id, skipped["disabled"].id, by=staff_by)
    sink.clear()
    return eligible + [expired], skipped


def test_mass_invite_invites_everyone_eligible_and_says_who_was_skipped(practice, crowd, clock, worker, sink):
    eligible, skipped = crowd
    admin = f"staff:{practice.admin.id}"
    seen: list[tuple[int, int]] = []
    report = engine.mass_invite(practice.id, by=admin, batch_size=3, progress=lambda d, t: seen.append((d, t)))
    worker.drain()
    assert (report.clients, report.invited, report.enqueued, report.batches) == (13, 8, 8, 5)
    assert report.skipped == {"disabled": 1, "already_active": 2, "no_email": 1, "no_consent": 1}
    assert seen == [(3, 13), (6, 13), (9, 13), (12, 13), (13, 13)]
    # Each eligible client got one invitation email with a working link; nobody else got one.
    for client in eligible:
        [mail] = [m for m in sink.messages if m["To"].addresses[0].addr_spec == client.primary_email]
        assert engine.verify_token(practice.id, token_of(mail)).client_id == client.id
        timeline = engine.timeline(practice.id, client_id=client.id)
        [invited] = [e for e in timeline if e["action"] == "invited" and e["actor"] == admin]
        assert invited["detail"] == {"kind": "invite", "mass": True, "to": client.primary_email}
        # A new access row with the model's default permissions (PostgreSQL writes it in SQL).
        access = PortalAccess.get(PortalAccess.client == client.id)
        assert (access.practice_id, access.portal_email, access.disabled_at) == (practice.id, None, None)
        assert (access.can_request_appointments, access.can_message, access.can_view_billing, access.can_pay) == (
            True, True, False, False)
    assert len(sink.messages) == 8
    assert engine.portal_status(practice.id, skipped["disabled"].id).status == "disabled"
    # The reminders follow as for any invitation (the nine live ones: eight new, one from before).
    clock.advance(days=3, minutes=1)
    sweep(clock.now(), enqueue=enqueue_steps, lease_s=60)
    worker.drain()
    assert len(sink.messages) == 8 + 9


def test_mass_invite_run_twice_invites_nobody_twice(practice, crowd, clock, worker, sink):
    admin = f"staff:{practice.admin.id}"
    first = engine.mass_invite(practice.id, by=admin, batch_size=4)
    worker.drain()
    clock.advance(timedelta(hours=1))
    second = engine.mass_invite(practice.id, by=admin, batch_size=4)
    worker.drain()
    assert (first.invited, second.invited) == (8, 0)
    assert second.skipped["already_active"] == 10
    assert len(sink.messages) == 8
    live = Invitation.select().where(Invitation.state.in_(["queued", "sent", "reminded"]))
    assert live.count() == 9 and len({i.client_id for i in live}) == 9


def test_mass_invite_is_for_admins_with_the_portal_on(practice, client_factory, staff_by, clock, worker, sink):
    client_factory()
    for by in (staff_by, "system:booking"):
        with pytest.raises(engine.Forbidden) as refused:
            engine.mass_invite(practice.id, by=by)
        assert refused.value.code == "forbidden"
    admin = f"staff:{practice.admin.id}"
    with pytest.raises(engine.InvalidInput):
        engine.mass_invite(practice.id, by=admin, batch_size=0)
    with pytest.raises(engine.InvalidInput) as bad:
        engine.mass_invite(practice.id, by=admin, writers=0)
    assert bad.value.code == "invalid_input"
    engine.set_portal_enabled(practice.id, False, by=admin)
    with pytest.raises(engine.PortalOff):
        engine.mass_invite(practice.id, by=admin)
    worker.drain()
    assert sink.messages == [] and Invitation.select().count() == 0


def test_mass_invite_racing_a_single_invite_invites_once(practice, client_factory, staff_by, clock, worker, sink,
                                                         monkeypatch):
    import threading

    from engine.core.db import connection, is_sqlite
    from engine.operations import mass

    if is_sqlite():
        pytest.skip("SQLite: a batch holds the write lock from its first read, so no invite can commit in between")
    clients = [client_factory() for _ in range(3)]
    real = mass._candidates
    calls = []

    def invite_elsewhere() -> None:
        with connection():
            engine.invite(practice.id, clients[1].id, by=staff_by)

    def stale_then_real(practice_id, *, after, upto):
        # Another connection invites the second client right after the batch read its candidates:
        # the batch's insert then meets the database's one-live-invitation rule, and is redone.
        rows = real(practice_id, after=after, upto=upto)
        if not calls:
            other = threading.Thread(target=invite_elsewhere)
            other.start()
            other.join()
        calls.append(after)
        return rows

    monkeypatch.setattr(mass, "_candidates", stale_then_real)
    report = engine.mass_invite(practice.id, by=f"staff:{practice.admin.id}")
    worker.drain()
    assert len(calls) == 2
    assert (report.invited, report.skipped["already_active"]) == (2, 1)
    assert len(sink.messages) == 3
    assert Invitation.select().count() == 3


@pytest.mark.parametrize("writers", [1, 3])
def test_mass_invite_in_parallel_batches_invites_each_client_once_in_order(practice, client_factory, clock, worker,
                                                                           sink, writers):
    # 45 clients in batches of 2: the ids are read 40 at a time, so the walk crosses a read,
    # and with three writers the batches commit out of order; the report still follows them.
    clients = [client_factory(email=f"p{i}@example.test") for i in range(45)]
    seen: list[int] = []
    report = engine.mass_invite(practice.id, by=f"staff:{practice.admin.id}", batch_size=2, writers=writers,
                                progress=lambda done, total: seen.append(done))
    worker.drain()
    assert (report.clients, report.invited, report.enqueued, report.batches) == (45, 45, 45, 23)
    assert seen == [*range(2, 45, 2), 45]
    assert sorted(i.client_id for i in Invitation.select()) == sorted(c.id for c in clients)
    assert sorted(m["To"].addresses[0].addr_spec for m in sink.messages) == sorted(c.primary_email for c in clients)


def test_mass_invite_stops_when_the_portal_is_switched_off_midway(practice, client_factory, clock, worker, sink,
                                                                  monkeypatch):
    from engine.operations import mass

    clients = [client_factory() for _ in range(6)]
    admin = f"staff:{practice.admin.id}"
    real = mass._run_batch
    batches: list[int] = []

    def then_switch_off(*args, **kwargs):
        batch = real(*args, **kwargs)
        batches.append(batch.examined)
        if len(batches) == 1:
            engine.set_portal_enabled(practice.id, False, by=admin)
        return batch

    monkeypatch.setattr(mass, "_run_batch", then_switch_off)
    with pytest.raises(engine.PortalOff) as refused:
        engine.mass_invite(practice.id, by=admin, batch_size=2, writers=1)
    assert refused.value.code == "portal_off"
    worker.drain()
    # The first batch had committed and keeps its two invitations; nobody after it was invited.
    assert sorted(i.client_id for i in Invitation.select()) == [clients[0].id, clients[1].id]
