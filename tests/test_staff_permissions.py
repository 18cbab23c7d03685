"""P13: the four per-client permissions, the paying rule, and what is in effect."""

from __future__ import annotations

import pytest

import engine
from engine.operations.access import NO_PERMISSIONS, Permissions


def permission_events(practice, client) -> list[dict]:
    return [e for e in engine.timeline(practice.id, client_id=client.id) if e["action"] == "permissions_set"]


def test_p13_staff_set_the_four_permissions_and_it_is_recorded(practice_factory, client_factory, clock):
    practice = practice_factory("Paying Paws", online_payments=True)
    by = f"staff:{practice.standard.id}"
    client = client_factory(practice)
    assert engine.permissions(practice.id, client.id, by=by) == Permissions(True, True, False, False)
    after = engine.set_permissions(practice.id, client.id, by=by, can_message=False, can_view_billing=True,
                                   can_pay=True)
    assert after == Permissions(True, False, True, True)
    assert engine.effective_permissions(practice.id, client.id) == after
    [event] = permission_events(practice, client)
    assert event["actor"] == by
    assert event["detail"] == {"can_message": False, "can_pay": True, "can_view_billing": True}


def test_p13_paying_needs_billing_and_online_payments_else_nothing_changes(practice_factory, client_factory,
                                                                            clock):
    practice = practice_factory("Cash Only Vets")  # no online payments
    by = f"staff:{practice.standard.id}"
    client = client_factory(practice)
    with pytest.raises(engine.PermissionRule) as refused:
        engine.set_permissions(practice.id, client.id, by=by, can_view_billing=True, can_pay=True)
    assert refused.value.code == "permission_rule"
    assert refused.value.details["rule"] == "pay_needs_online_payments"
    assert engine.permissions(practice.id, client.id, by=by) == Permissions(True, True, False, False)
    assert permission_events(practice, client) == []

    engine.update_practice(practice.id, by=f"staff:{practice.admin.id}", online_payments=True)
    with pytest.raises(engine.PermissionRule) as refused:
        engine.set_permissions(practice.id, client.id, by=by, can_pay=True, can_request_appointments=False)
    assert refused.value.details["rule"] == "pay_needs_billing"
    assert engine.permissions(practice.id, client.id, by=by).can_request_appointments is True

    engine.set_permissions(practice.id, client.id, by=by, can_view_billing=True, can_pay=True)
    # Taking billing away while paying stays on breaks the rule too.
    with pytest.raises(engine.PermissionRule):
        engine.set_permissions(practice.id, client.id, by=by, can_view_billing=False)
    with pytest.raises(engine.InvalidInput):
        engine.set_permissions(practice.id, client.id, by=by, can_pay="yes")  # type: ignore[arg-type]
    with pytest.raises(engine.InvalidInput):
        engine.set_permissions(practice.id, client.id, by=by)
    assert engine.permissions(practice.id, client.id, by=by) == Permissions(True, True, True, True)


def test_p13_effective_permissions_are_none_while_disabled_or_portal_off(practice_factory, client_factory, clock):
    practice = practice_factory("Switchy Vets", online_payments=True)
    by, admin = f"staff:{practice.standard.id}", f"staff:{practice.admin.id}"
    client = client_factory(practice)
    granted = engine.set_permissions(practice.id, client.id, by=by, can_view_billing=True, can_pay=True)

    engine.set_portal_enabled(practice.id, False, by=admin)
    assert engine.effective_permissions(practice.id, client.id) == NO_PERMISSIONS
    engine.set_portal_enabled(practice.id, True, by=admin)
    assert engine.effective_permissions(practice.id, client.id) == granted

    engine.disable(practice.id, client.id, by=by)
    assert engine.effective_permissions(practice.id, client.id, by=by) == NO_PERMISSIONS
    assert engine.permissions(practice.id, client.id, by=by) == granted  # kept for when access comes back


def test_p13_paying_stops_when_the_practice_turns_online_payments_off(practice_factory, client_factory, clock):
    practice = practice_factory("Lapsed Payments", online_payments=True)
    by = f"staff:{practice.standard.id}"
    client = client_factory(practice)
    engine.set_permissions(practice.id, client.id, by=by, can_view_billing=True, can_pay=True)
    engine.update_practice(practice.id, by=f"staff:{practice.admin.id}", online_payments=False)
    effective = engine.effective_permissions(practice.id, client.id)
    assert effective.can_view_billing and not effective.can_pay
