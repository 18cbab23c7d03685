"""Staff views of one practice (P17): what needs attention, what is pending, what is scheduled.

Each view is role-checked (action ``view``), scoped to one practice, paged with
``limit``/``offset`` (default 100, at most 1000) and returns plain dataclasses whose
``to_dict()`` is what ``--json`` prints. Every query is one SELECT with the client joined in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from peewee import JOIN, SQL, fn

from engine.core import clock, validate
from engine.core.errors import InvalidInput
from engine.core.models import Client, Invitation, OutboxEmail, PortalAccess, Practice
from engine.operations import lookup, roles
from workflows.invitation import LIVE_STATES, State

_LIVE = [s.value for s in LIVE_STATES]
MAX_LIMIT = 1000


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


class _Row:
    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]


@dataclass(frozen=True)
class AttentionItem(_Row):
    """Something staff should look at: a failed delivery, or an invitation that ran out unused."""

    reason: str  # failed | expired | reset_failed
    client_id: int
    client_name: str
    email: str
    at: datetime | None
    invitation_id: int | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class PendingItem(_Row):
    """A live invitation: invited, not signed in yet."""

    invitation_id: int
    client_id: int
    client_name: str
    email: str
    state: str
    invited_at: datetime
    sent_at: datetime | None
    days_waiting: int
    reminders_sent: int
    expires_at: datetime | None


@dataclass(frozen=True)
class ScheduledItem(_Row):
    """The next follow-up of a live invitation, and when it will go."""

    invitation_id: int
    client_id: int
    client_name: str
    email: str
    next_step: str  # invitation | reminder | expiry
    reminder_number: int | None
    due_at: datetime
    #: ``due_at`` in the practice's time zone (the send window is in that time).
    due_local: str
    paused: bool  # the practice's portal is off: it goes once the portal is back on


@dataclass(frozen=True)
class ViewPage:
    """One page of a view, with the number of rows in the whole view."""

    view: str
    practice_id: int
    total: int
    limit: int
    offset: int
    items: list[Any]

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "items"},
                "items": [item.to_dict() for item in self.items]}


def _page(limit: object, offset: object) -> tuple[int, int]:
    limit = validate.int_between(limit, 1, MAX_LIMIT, field="limit")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInput("offset must be 0 or more", field="offset")
    return limit, offset


def _open(practice_id: int, by: str, limit: object, offset: object) -> tuple[Practice, int, int]:
    roles.authorize(practice_id, by, "view")
    size, skip = _page(limit, offset)
    return lookup.practice(practice_id), size, skip


def needs_attention(practice_id: int, *, by: str, limit: int = 100, offset: int = 0) -> ViewPage:
    """Failed deliveries (with the last error), and invitations that expired without a sign-in,
    whose client was not invited again since; then reset emails that could not be delivered.
    Clients who signed in after all, or whose access staff disabled, are left out. Newest first.
    """
    practice, size, skip = _open(practice_id, by, limit, offset)
    newer = Invitation.alias()
    invitations: Any = (
        Invitation.select(Invitation, Client.name.alias("client_name"))
        .join(Client, on=(Client.id == Invitation.client))
        .switch(Invitation)
        .join(PortalAccess, JOIN.LEFT_OUTER, on=(PortalAccess.client == Invitation.client))
        .where(
            (Invitation.practice == practice.id)
            & Invitation.state.in_([State.FAILED.value, State.EXPIRED.value])
            & PortalAccess.first_signed_in_at.is_null()
            & PortalAccess.disabled_at.is_null()
            & ~fn.EXISTS(newer.select(SQL("1")).where((newer.client == Invitation.client) & (newer.id > Invitation.id)))
        )
    )
    later = OutboxEmail.alias()
    resets: Any = (
        OutboxEmail.select(OutboxEmail, Client.name.alias("client_name"))
        .join(Client, on=(Client.id == OutboxEmail.client))
        .switch(OutboxEmail)
        .join(PortalAccess, JOIN.LEFT_OUTER, on=(PortalAccess.client == OutboxEmail.client))
        .where(
            (OutboxEmail.practice == practice.id)
            & (OutboxEmail.kind == "reset")
            & (OutboxEmail.status == "failed")
            & PortalAccess.disabled_at.is_null()
            & ~fn.EXISTS(later.select(SQL("1")).where(
                (later.client == OutboxEmail.client) & (later.kind == "reset") & (later.id > OutboxEmail.id)))
        )
    )
    # Two sources, one order: take enough of each for this page, merge, then cut the page.
    want = skip + size
    items = [
        AttentionItem(str(inv.state), inv.client_id, inv.client_name, inv.email, inv.ended_at, inv.id, inv.last_error)
        for inv in invitations.order_by(Invitation.ended_at.desc(), Invitation.id.desc()).limit(want).objects()
    ] + [
        AttentionItem("reset_failed", row.client_id, row.client_name, row.to_email, row.created_at, None,
                      row.last_error)
        for row in resets.order_by(OutboxEmail.created_at.desc(), OutboxEmail.id.desc()).limit(want).objects()
    ]
    items.sort(key=lambda item: item.at or datetime.min.replace(tzinfo=UTC), reverse=True)
    total = invitations.count() + resets.count()
    return ViewPage("needs_attention", practice.id, total, size, skip, items[skip:want])


def _live(practice: Practice) -> Any:
    return (
        Invitation.select(Invitation, Client.name.alias("client_name"))
        .join(Client, on=(Client.id == Invitation.client))
        .where((Invitation.practice == practice.id) & Invitation.state.in_(_LIVE))
    )


def pending(practice_id: int, *, by: str, limit: int = 100, offset: int = 0,
            now: datetime | None = None) -> ViewPage:
    """Invited and not signed in yet, longest waiting first, with days waiting and reminders sent."""
    now = now or clock.now()
    practice, size, skip = _open(practice_id, by, limit, offset)
    query = _live(practice)
    rows = query.order_by(Invitation.created_at, Invitation.id).limit(size).offset(skip).objects()
    items = [
        PendingItem(inv.id, inv.client_id, inv.client_name, inv.email, str(inv.state), inv.created_at, inv.sent_at,
                    max(0, (now - inv.created_at).days), inv.reminders_sent, inv.expires_at)
        for inv in rows
    ]
    return ViewPage("pending", practice.id, query.count(), size, skip, items)


def _next_step(inv: Invitation) -> tuple[str, int | None]:
    if inv.state == State.QUEUED:
        return "invitation", None
    if inv.expires_at is not None and inv.next_action_at >= inv.expires_at:
        return "expiry", None
    return "reminder", inv.reminders_sent + 1


def scheduled(practice_id: int, *, by: str, limit: int = 100, offset: int = 0) -> ViewPage:
    """The next follow-ups, soonest first: what goes (the invitation, reminder N, or expiry)
    and when, in UTC and in the practice's local time."""
    practice, size, skip = _open(practice_id, by, limit, offset)
    zone = ZoneInfo(practice.time_zone)
    query = _live(practice).where(Invitation.next_action_at.is_null(False))
    rows = query.order_by(Invitation.next_action_at, Invitation.id).limit(size).offset(skip).objects()
    items = []
    for inv in rows:
        step, number = _next_step(inv)
        items.append(ScheduledItem(inv.id, inv.client_id, inv.client_name, inv.email, step, number,
                                   inv.next_action_at, inv.next_action_at.astimezone(zone).isoformat(),
                                   not practice.portal_enabled))
    return ViewPage("scheduled", practice.id, query.count(), size, skip, items)
