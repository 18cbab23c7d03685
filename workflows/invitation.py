"""The invitation workflow: its states, its events, and the one function that moves it.

Everything about *which* state may follow which lives in ``TRANSITIONS``; nothing else in the
code base writes ``Invitation.state``.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from engine.db import write
from engine.errors import Conflict, IllegalTransition
from engine.models import AuditEvent, Invitation


class State(StrEnum):
    QUEUED = "queued"  # written, invitation email not sent yet
    SENT = "sent"  # invitation email accepted by the mail server
    REMINDED = "reminded"  # at least one reminder sent
    SIGNED_IN = "signed_in"  # the client signed in: the workflow is over
    EXPIRED = "expired"  # lifetime over without a sign-in
    REVOKED = "revoked"  # resend, disable, email change: its links are dead
    FAILED = "failed"  # delivery failed for good


class Event(StrEnum):
    DELIVER = "deliver"
    REMIND = "remind"
    SIGN_IN = "sign_in"
    EXPIRE = "expire"
    REVOKE = "revoke"
    FAIL = "fail"


Q, S, R = State.QUEUED, State.SENT, State.REMINDED

#: event: (states it may fire from, state it leads to)
TRANSITIONS: dict[Event, tuple[frozenset[State], State]] = {
    Event.DELIVER: (frozenset({Q}), State.SENT),
    Event.REMIND: (frozenset({S, R}), State.REMINDED),
    Event.SIGN_IN: (frozenset({Q, S, R}), State.SIGNED_IN),
    Event.EXPIRE: (frozenset({S, R}), State.EXPIRED),
    Event.REVOKE: (frozenset({Q, S, R}), State.REVOKED),
    Event.FAIL: (frozenset({Q, S, R}), State.FAILED),
}

#: States some event can leave: the workflow is still running.
LIVE_STATES: frozenset[State] = frozenset().union(*(src for src, _ in TRANSITIONS.values()))
#: States no event leaves.
TERMINAL_STATES: frozenset[State] = frozenset(State) - LIVE_STATES


def target(state: str, event: Event) -> State:
    """The state ``event`` leads to from ``state``, or ``IllegalTransition``."""
    allowed, to = TRANSITIONS[event]
    if state not in allowed:
        raise IllegalTransition(
            f"cannot {event.value} an invitation that is {state}",
            state=str(state),
            event=event.value,
        )
    return to


def transition(
    invitation: Invitation,
    event: Event,
    *,
    actor: str,
    now: datetime,
    detail: dict[str, Any] | None = None,
    **changes: Any,
) -> Invitation:
    """Apply ``event`` to ``invitation`` as one guarded update plus its audit row.

    The update only matches if the row still has the state and version we read
    (compare-and-set): a concurrent change raises ``Conflict`` and writes nothing.
    ``changes`` are other columns to set in the same update. Returns the updated row.
    """
    to = target(invitation.state, event)
    if to in TERMINAL_STATES:
        changes.setdefault("ended_at", now)
        changes.setdefault("next_action_at", None)
        changes.setdefault("lease_until", None)
    with write():
        updated = (
            Invitation.update(state=to.value, version=Invitation.version + 1, **changes)
            .where(
                (Invitation.id == invitation.id)
                & (Invitation.state == invitation.state)
                & (Invitation.version == invitation.version)
            )
            .execute()
        )
        if updated != 1:
            raise Conflict(
                "invitation changed while we were working on it", invitation_id=invitation.id
            )
        AuditEvent.create(
            practice=invitation.practice_id,
            client=invitation.client_id,
            invitation=invitation.id,
            at=now,
            actor=actor,
            action=event.value,
            from_state=invitation.state,
            to_state=to.value,
            detail=json.dumps(detail, sort_keys=True, default=str) if detail else None,
        )
    fresh: Invitation = Invitation.get_by_id(invitation.id)
    return fresh


def diagram() -> str:
    """The state diagram as Mermaid, generated from ``TRANSITIONS`` (the README embeds it)."""
    lines = ["stateDiagram-v2", "    [*] --> queued"]
    for event, (sources, to) in TRANSITIONS.items():
        for src in sorted(sources):
            lines.append(f"    {src} --> {to}: {event}")
    for state in sorted(TERMINAL_STATES):
        lines.append(f"    {state} --> [*]")
    return "\n".join(lines)
