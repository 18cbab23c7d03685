"""When follow-ups are due: the practice's cadence, lifetime and send window."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from engine.core.models import Invitation, Practice


def _zone(practice: Practice) -> ZoneInfo:
    return ZoneInfo(practice.time_zone)


def in_window(practice: Practice, when: datetime) -> bool:
    """Whether ``when`` falls inside the practice's send window (its local time)."""
    start, end = practice.window_start_min, practice.window_end_min
    if start is None or end is None or start == end:
        return True
    local = when.astimezone(_zone(practice))
    minute = local.hour * 60 + local.minute
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end  # a window across midnight


def next_window_start(practice: Practice, when: datetime) -> datetime:
    """The earliest moment at or after ``when`` inside the send window (DST-aware)."""
    if in_window(practice, when):
        return when
    zone = _zone(practice)
    local = when.astimezone(zone)
    start = practice.window_start_min
    assert start is not None
    opening = time(start // 60, start % 60)
    for days in (0, 1, 2):
        day = local.date() + timedelta(days=days)
        candidate = datetime.combine(day, opening, tzinfo=zone)
        # A local time inside a DST gap does not exist: zoneinfo maps it forward, which is fine.
        if candidate >= local:
            return candidate.astimezone(when.tzinfo)
    raise AssertionError("a daily window always opens within two days")


def reminder_due_at(practice: Practice, invitation: Invitation, number: int) -> datetime | None:
    """When reminder ``number`` (1-based) is due, before the window, or None if there is none."""
    offsets = practice.reminder_offsets
    if invitation.sent_at is None or number > len(offsets):
        return None
    return invitation.sent_at + timedelta(seconds=offsets[number - 1])


def next_action_at(practice: Practice, invitation: Invitation) -> datetime:
    """The next follow-up of a sent invitation: its next reminder, or its expiry."""
    assert invitation.expires_at is not None
    due = reminder_due_at(practice, invitation, invitation.reminders_sent + 1)
    if due is None:
        return invitation.expires_at
    return min(next_window_start(practice, due), invitation.expires_at)
