"""P17: roles decide who may do what; every operation is in the timeline with who did it."""

from __future__ import annotations

import pytest

import engine
from engine.core.models import AuditEvent


def test_p17_standard_staff_do_the_day_to_day_work(practice, client_factory, staff_by, clock, worker, sink):
    client = client_factory(email="daily@example.test")
    invitation = engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    resent = engine.resend(practice.id, client.id, by=staff_by, message="Here is a fresh link")
    change = engine.change_portal_email(practice.id, client.id, "daily2@example.test", by=staff_by)
    worker.drain()
    engine.set_permissions(practice.id, client.id, by=staff_by, can_message=False)
    for view in (engine.needs_attention, engine.pending, engine.scheduled):
        view(practice.id, by=staff_by)
    engine.disable(practice.id, client.id, by=staff_by)
    # Every step is on the timeline, with who did it.
    events = [(e["actor"], e["action"], e["invitation_id"]) for e in engine.timeline(practice.id, client_id=client.id)]
    for expected in [
        (staff_by, "invited", invitation.id),
        ("worker", "deliver", invitation.id),
        (staff_by, "revoke", invitation.id),
        (staff_by, "resent", resent.id),
        (staff_by, "portal_email_changed", None),
        (staff_by, "revoke", resent.id),
        (staff_by, "invited", change.invitation_id),
        (staff_by, "permissions_set", None),
        (staff_by, "revoke", change.invitation_id),
        (staff_by, "access_disabled", change.invitation_id),
    ]:
        assert expected in events


def test_p17_only_admins_change_settings_run_mass_invitations(practice, client_factory, staff_by, clock):
    before = AuditEvent.select().count()
    for call in (
        lambda by: engine.set_portal_enabled(practice.id, False, by=by),
        lambda by: engine.mass_invite(practice.id, by=by),
        lambda by: engine.update_practice(practice.id, by=by, name="Renamed"),
    ):
        with pytest.raises(engine.Forbidden) as refused:
            call(staff_by)
        assert refused.value.code == "forbidden" and refused.value.details["role"] == "standard"
    assert AuditEvent.select().count() == before
    admin = f"staff:{practice.admin.id}"
    assert engine.mass_invite(practice.id, by=admin).invited == 0  # no clients yet
    assert engine.set_portal_enabled(practice.id, False, by=admin).changed


def test_p17_other_systems_act_under_a_name_and_only_on_their_part(practice, client_factory, clock, worker, sink):
    client = client_factory(email="sys@example.test")
    shared = engine.share_documents(practice.id, client.id, by="system:documents")
    worker.drain()
    assert engine.timeline(practice.id, invitation_id=shared.invitation_id)[0]["actor"] == "system:documents"
    for call in (
        lambda: engine.disable(practice.id, client.id, by="system:booking"),
        lambda: engine.resend(practice.id, client.id, by="system:booking"),
        lambda: engine.change_portal_email(practice.id, client.id, "x@example.test", by="system:booking"),
        lambda: engine.change_primary_email(practice.id, client.id, "x@example.test", by="system:booking"),
        lambda: engine.set_permissions(practice.id, client.id, by="system:booking", can_message=False),
    ):
        with pytest.raises(engine.Forbidden):
            call()


def test_p17_actors_outside_the_practice_are_refused(practice_factory, practice, client_factory, clock):
    other = practice_factory("Elsewhere Vets")
    client = client_factory()
    with pytest.raises(engine.UnknownStaff):
        engine.disable(practice.id, client.id, by=f"staff:{other.admin.id}")
    for bad in ("staff:abc", "admin", "system:Bad Name", ""):
        with pytest.raises(engine.InvalidInput):
            engine.disable(practice.id, client.id, by=bad)
    assert engine.portal_status(practice.id, client.id).status == "never_invited"
