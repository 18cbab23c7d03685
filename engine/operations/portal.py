"""The practice's portal as a whole: switching it off and on (P15), its link and widget (P16)."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from markupsafe import escape
from peewee import SQL, Expression, Field, fn

from engine.core import audit, clock, validate
from engine.core.db import is_postgres, is_sqlite, write
from engine.core.errors import InvalidInput
from engine.core.models import Invitation, Practice, Token
from engine.operations import lookup, roles
from workflows.invitation import LIVE_STATES

logger = logging.getLogger("invites.portal")

_LIVE = [s.value for s in LIVE_STATES]
DEFAULT_LABEL = "Client portal"


@dataclass(frozen=True)
class PortalSwitch:
    """What switching the portal did."""

    practice_id: int
    portal_enabled: bool
    #: False when the portal already was in the state asked for.
    changed: bool
    #: Switching on: how long the portal was off, and how many live invitations moved by it.
    paused_s: int = 0
    shifted_invitations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PortalLink:
    """The practice's portal address and a snippet for its own website (P16)."""

    practice_id: int
    practice_name: str
    portal_url: str
    portal_enabled: bool
    widget_html: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plus(field: Field, seconds: int) -> Expression:
    """``field + seconds`` computed by the database, for one UPDATE over many rows.

    SQLite holds our timestamps as fixed-width text: shift the whole seconds with strftime and
    put the original fraction (characters 20 on, ".ffffff") back. NULL stays NULL on both.
    """
    if is_sqlite():
        return fn.strftime("%Y-%m-%d %H:%M:%S", field, f"+{seconds} seconds").concat(fn.substr(field, 20))
    return field + SQL("%s * interval '1 second'", (seconds,))


def _shift_follow_ups(practice_id: int, seconds: int) -> int:
    """Move every live invitation's timers, and its live links' expiry, later by ``seconds``.

    ``sent_at`` moves too: it anchors the reminder cadence, so without it every reminder that
    fell due during the pause would be due at once when the portal comes back (a burst).
    The delivery itself stays on record, with its real time, in the invitation's timeline.
    """
    live = (Invitation.practice == practice_id) & Invitation.state.in_(_LIVE)
    Token.update(expires_at=_plus(Token.expires_at, seconds)).where(
        Token.invitation.in_(Invitation.select(Invitation.id).where(live))
        & (Token.purpose == "invite")
        & Token.used_at.is_null()
        & Token.revoked_at.is_null()
    ).execute()
    return int(
        Invitation.update(
            next_action_at=_plus(Invitation.next_action_at, seconds),
            expires_at=_plus(Invitation.expires_at, seconds),
            sent_at=_plus(Invitation.sent_at, seconds),
        )
        .where(live)
        .execute()
    )


def set_portal_enabled(practice_id: int, enabled: bool, *, by: str, now: datetime | None = None) -> PortalSwitch:
    """Switch the client portal off or on for the whole practice (admin only, P15).

    Off: nobody signs in or redeems a link, no email goes, due follow-ups wait. On again: every
    live invitation's follow-ups and expiry (and its links' expiry) move later by the length
    of the pause, so none is lost and they do not all go at once; the send window still applies.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "practice_settings")
    if not isinstance(enabled, bool):
        raise InvalidInput("enabled must be true or false", field="enabled")
    with write():
        practice = lookup.practice(practice_id)
        if is_postgres():
            # Two "on" calls at once must not both shift the follow-ups: take the row's lock.
            practice = Practice.select().where(Practice.id == practice.id).for_update().get()
        if practice.portal_enabled == enabled:
            return PortalSwitch(practice.id, enabled, changed=False)
        if not enabled:
            Practice.update(portal_enabled=False, portal_off_since=now, updated_at=now).where(
                Practice.id == practice.id
            ).execute()
            audit.record(practice_id=practice.id, actor=actor, action="portal_switched_off", now=now)
            result = PortalSwitch(practice.id, False, changed=True)
        else:
            since = practice.portal_off_since or now
            paused_s = max(0, math.ceil((now - since).total_seconds()))
            shifted = _shift_follow_ups(practice.id, paused_s) if paused_s else 0
            Practice.update(portal_enabled=True, portal_off_since=None, updated_at=now).where(
                Practice.id == practice.id
            ).execute()
            audit.record(practice_id=practice.id, actor=actor, action="portal_switched_on", now=now,
                         detail={"paused_s": paused_s, "shifted_invitations": shifted})
            result = PortalSwitch(practice.id, True, changed=True, paused_s=paused_s, shifted_invitations=shifted)
    logger.info("portal switched %s", "on" if enabled else "off",
                extra={"action": "portal_switched", "practice_id": practice_id, "enabled": enabled})
    return result


def widget_snippet(practice: Practice, label: str = DEFAULT_LABEL) -> str:
    """An HTML button linking to the practice's portal: no script, every value escaped."""
    return (
        f'<a class="portal-invites-widget" data-practice="{practice.id}" href="{escape(practice.portal_url)}" '
        f'title="{escape(practice.name)}: {escape(label)}" target="_blank" rel="noopener" '
        'style="display:inline-block;padding:12px 20px;border-radius:6px;background:#1f5fbf;color:#ffffff;'
        f'font:600 16px/1.2 Arial,Helvetica,sans-serif;text-decoration:none">{escape(label)}</a>'
    )


def portal_link(practice_id: int, *, by: str, label: str | None = None) -> PortalLink:
    """The practice's portal URL and an embeddable website widget snippet (P16).

    Staff also share the URL with signed-in clients instead of a resend (P12).
    """
    roles.authorize(practice_id, by, "view")
    text = DEFAULT_LABEL if label is None else validate.name(label, field="label")
    if len(text) > 60:
        raise InvalidInput("label is longer than 60 characters", field="label")
    practice = lookup.practice(practice_id)
    return PortalLink(practice.id, practice.name, practice.portal_url, bool(practice.portal_enabled),
                      widget_snippet(practice, text))
