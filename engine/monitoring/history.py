"""How invitations went over the last days: activity per day, and conversion by reminders.

The activity chart counts workflow events of the audit trail (``AuditEvent``); the conversion
table reads the invitations themselves. Both are figures of ``now``, which the caller passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from typing import cast

from peewee import fn

from engine.core.db import is_sqlite
from engine.core.models import AuditEvent, Invitation
from workflows.invitation import State

#: Chart series → the audit actions counted in it (a sign-in without a live invitation counts too).
SERIES: dict[str, tuple[str, ...]] = {
    "sent": ("deliver",),
    "reminders": ("remind",),
    "sign_ins": ("sign_in", "signed_in"),
    "expiries": ("expire",),
}


@dataclass(frozen=True)
class DayActivity:
    """One UTC day of the chart."""

    day: date
    sent: int = 0
    reminders: int = 0
    sign_ins: int = 0
    expiries: int = 0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "day": self.day.isoformat()}


def daily_activity(now: datetime, *, days: int = 14) -> list[DayActivity]:
    """Sends, reminders, sign-ins and expiries per UTC day, the last ``days`` days to today."""
    first = now.date() - timedelta(days=days - 1)
    start = datetime.combine(first, time(0), tzinfo=now.tzinfo)
    # Our timestamps are fixed-width text on SQLite: the day is the first ten characters.
    # coerce(False): the day is text, not a value for the timestamp field to convert.
    day = (fn.substr(AuditEvent.at, 1, 10) if is_sqlite() else fn.to_char(AuditEvent.at, "YYYY-MM-DD")).coerce(False)
    action_to_series = {action: name for name, actions in SERIES.items() for action in actions}
    query = (
        AuditEvent.select(day, AuditEvent.action, fn.COUNT(AuditEvent.id))
        .where((AuditEvent.at >= start) & AuditEvent.action.in_(list(action_to_series)))
        .group_by(day, AuditEvent.action)
        .tuples()
    )
    counts: dict[tuple[str, str], int] = {}
    for day_text, action, n in cast(Iterable[tuple[str, str, int]], query):
        key = (str(day_text), action_to_series[action])
        counts[key] = counts.get(key, 0) + int(n)
    result = []
    for offset in range(days):
        d = first + timedelta(days=offset)
        iso = d.isoformat()
        result.append(DayActivity(d, **{name: counts.get((iso, name), 0) for name in SERIES}))
    return result


@dataclass(frozen=True)
class ConversionStep:
    """Invitations that got ``reminders`` reminders, and how many signed in before another."""

    reminders: int
    reached: int
    signed_in: int
    #: signed_in / reached: how well this stage converts.
    rate: float | None
    #: Signed in by this stage, of every invitation of the period.
    cumulative_rate: float | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def conversion_by_reminders(now: datetime, *, days: int = 30) -> tuple[int, list[ConversionStep]]:
    """Invited → signed in, by the number of reminders sent before the sign-in.

    The period is the invitations delivered (``sent_at``) in the last ``days`` days; returns
    how many there were and one step per number of reminders (0 = signed in on the invitation).
    """
    since = now - timedelta(days=days)
    query = (
        Invitation.select(Invitation.reminders_sent, Invitation.state, fn.COUNT(Invitation.id))
        .where(Invitation.sent_at.is_null(False) & (Invitation.sent_at >= since))
        .group_by(Invitation.reminders_sent, Invitation.state)
        .tuples()
    )
    reached_exactly: dict[int, int] = {}
    signed: dict[int, int] = {}
    for reminders, state, n in cast(Iterable[tuple[int, str, int]], query):
        reached_exactly[reminders] = reached_exactly.get(reminders, 0) + int(n)
        if state == State.SIGNED_IN:
            signed[reminders] = signed.get(reminders, 0) + int(n)
    total = sum(reached_exactly.values())
    steps = []
    cumulative = 0
    for k in range(max(reached_exactly, default=-1) + 1):
        reached = sum(n for r, n in reached_exactly.items() if r >= k)
        cumulative += signed.get(k, 0)
        steps.append(
            ConversionStep(
                reminders=k,
                reached=reached,
                signed_in=signed.get(k, 0),
                rate=signed.get(k, 0) / reached if reached else None,
                cumulative_rate=cumulative / total if total else None,
            )
        )
    return total, steps
