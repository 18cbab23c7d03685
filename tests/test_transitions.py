"""The transition table: every (state, event) pair is either the table's move or an error."""

from __future__ import annotations

import pytest

from engine.core.errors import IllegalTransition
from engine.core.models import AuditEvent, Invitation
from workflows.invitation import LIVE_STATES, TERMINAL_STATES, TRANSITIONS, Event, State, diagram, transition

PAIRS = [(state, event) for state in State for event in Event]


def test_terminal_states_are_derived_from_the_table():
    assert TERMINAL_STATES == {State.SIGNED_IN, State.EXPIRED, State.REVOKED, State.FAILED}
    assert LIVE_STATES == {State.QUEUED, State.SENT, State.REMINDED}


@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s}-{e}" for s, e in PAIRS])
def test_every_state_event_pair(state, event, practice, client_factory, clock):
    client = client_factory(consent=False)
    invitation = Invitation.create(
        practice=practice.id, client=client.id, email="x@example.test", state=state.value,
        created_by="test", created_at=clock.now(), next_action_at=clock.now(),
    )
    allowed, to = TRANSITIONS[event]
    events_before = AuditEvent.select().count()
    if state in allowed:
        after = transition(invitation, event, actor="test", now=clock.now())
        assert after.state == to
        assert after.version == invitation.version + 1
        assert AuditEvent.select().count() == events_before + 1
        if to in TERMINAL_STATES:
            assert after.next_action_at is None and after.ended_at == clock.now()
    else:
        with pytest.raises(IllegalTransition) as refused:
            transition(invitation, event, actor="test", now=clock.now())
        assert refused.value.code == "illegal_transition"
        assert Invitation.get_by_id(invitation.id).state == state
        assert AuditEvent.select().count() == events_before


def test_a_stale_row_is_a_conflict_not_a_silent_overwrite(practice, client_factory, clock):
    from engine.core.errors import Conflict

    client = client_factory()
    invitation = Invitation.create(practice=practice.id, client=client.id, email="x@example.test",
                                   state="sent", created_by="test", created_at=clock.now())
    transition(invitation, Event.REMIND, actor="test", now=clock.now())
    with pytest.raises(Conflict):
        transition(invitation, Event.EXPIRE, actor="test", now=clock.now())  # our copy is stale


def test_readme_diagram_is_generated_from_the_table():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert diagram() in readme
