"""The invitation workflow: its states, its events, and the one function that moves it.

Everything about *which* state may follow which lives in ``TRANSITIONS``; nothing else in the
code base writes ``Invitation.state``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from engine.core.db import db, insert_rows, is_postgres, write
from engine.core.errors import Conflict, IllegalTransition
from engine.core.models import AuditEvent, Invitation


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


#: PostgreSQL types of the columns ``transition_many`` may set (the rest need no cast).
_PG_CASTS = {"TIMESTAMP": "::timestamp", "INT": "::integer", "TEXT": "::text"}


@dataclass(frozen=True)
class Move:
    """One invitation's part in ``transition_many``: the row as read, its other columns, its audit detail."""

    invitation: Invitation
    changes: dict[str, Any]
    detail: dict[str, Any] | None = None


def transition_many(moves: Sequence[Move], event: Event, *, actor: str, now: datetime) -> None:
    """``transition`` for many invitations at once: the same guarded update for each row, sent as
    one batch, and their audit rows in one insert.

    Every row keeps its own compare-and-set on (id, state, version). If any row changed since it
    was read, ``Conflict`` is raised and nothing is written; callers that lock the rows first
    (``SELECT … FOR UPDATE``, or SQLite's ``BEGIN IMMEDIATE``) never see it. The moves must all
    set the same columns (one statement serves them all).
    """
    if not moves:
        return
    columns = sorted(moves[0].changes)
    to = None
    for move in moves:
        to = target(move.invitation.state, event)
        if sorted(move.changes) != columns:
            raise ValueError("transition_many needs the same columns in every move")
    assert to is not None
    if to in TERMINAL_STATES:
        raise ValueError("transition_many moves live invitations only; terminal ones go one by one")
    fields = [Invitation._meta.fields[name] for name in columns]
    table, param = Invitation._meta.table_name, db.param
    # One UPDATE … FROM (VALUES …) for the lot: a statement per row cost a round trip and a
    # parse each on PostgreSQL. VALUES columns are column1, column2… on both databases; a
    # VALUES list on PostgreSQL types its columns from the first row, hence the casts.
    sets = "".join(
        f', "{f.column_name}" = v.column{i + 4}{_PG_CASTS.get(f.field_type, "") if is_postgres() else ""}'
        for i, f in enumerate(fields)
    )
    row = "(" + ", ".join([param] * (3 + len(fields))) + ")"
    sql = (
        f'UPDATE "{table}" SET "state" = {param}, "version" = "{table}"."version" + 1{sets}'
        + f' FROM (VALUES {", ".join([row] * len(moves))}) AS v'
        + f' WHERE "{table}"."id" = v.column1 AND "{table}"."state" = v.column2 AND "{table}"."version" = v.column3'
        + f' RETURNING "{table}"."id"'
    )
    params: list[Any] = [to.value]
    for m in moves:
        params += [m.invitation.id, m.invitation.state, m.invitation.version]
        params += [f.db_value(m.changes[f.name]) for f in fields]
    with write():
        updated = db.execute_sql(sql, params).fetchall()
        if len(updated) != len(moves):
            raise Conflict("invitations changed while we were working on them", count=len(moves))
        insert_rows(
            [AuditEvent.practice, AuditEvent.client, AuditEvent.invitation, AuditEvent.at, AuditEvent.actor,
             AuditEvent.action, AuditEvent.from_state, AuditEvent.to_state, AuditEvent.detail],
            [
                (m.invitation.practice_id, m.invitation.client_id, m.invitation.id, now, actor, event.value,
                 m.invitation.state, to.value, json.dumps(m.detail, sort_keys=True, default=str) if m.detail else None)
                for m in moves
            ],
        )


def diagram() -> str:
    """The state diagram as Mermaid, generated from ``TRANSITIONS`` (the README embeds it)."""
    lines = ["stateDiagram-v2", "    [*] --> queued"]
    for event, (sources, to) in TRANSITIONS.items():
        for src in sorted(sources):
            lines.append(f"    {src} --> {to}: {event}")
    for state in sorted(TERMINAL_STATES):
        lines.append(f"    {state} --> [*]")
    return "\n".join(lines)
