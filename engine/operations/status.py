"""What staff see: a client's portal status (P8) and an invitation's timeline."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from engine.core.errors import InvalidInput
from engine.core.models import AuditEvent, Invitation, PortalAccess
from engine.operations import lookup
from workflows.invitation import LIVE_STATES


@dataclass(frozen=True)
class PortalStatus:
    """A client's portal access at a glance."""

    client_id: int
    status: str  # never_invited | invited | signed_in | expired | disabled | failed | revoked
    portal_email: str | None
    portal_enabled: bool
    invitation_id: int | None = None
    invitation_state: str | None = None
    invited_at: datetime | None = None
    sent_at: datetime | None = None
    reminders_sent: int = 0
    next_action_at: datetime | None = None
    expires_at: datetime | None = None
    first_signed_in_at: datetime | None = None
    disabled_at: datetime | None = None
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


def _status(access: PortalAccess | None, latest: Invitation | None) -> str:
    if access is not None and access.disabled_at is not None:
        return "disabled"
    if access is not None and access.first_signed_in_at is not None:
        return "signed_in"
    if latest is None:
        return "never_invited"
    if latest.state in LIVE_STATES:
        return "invited"
    return str(latest.state)


def portal_status(practice_id: int, client_id: int) -> PortalStatus:
    practice = lookup.practice(practice_id)
    client = lookup.client(practice.id, client_id)
    access = PortalAccess.get_or_none(PortalAccess.client == client.id)
    latest = lookup.latest_invitation(client.id)
    return PortalStatus(
        client_id=client.id,
        status=_status(access, latest),
        portal_email=(access.portal_email if access and access.portal_email else client.primary_email),
        portal_enabled=practice.portal_enabled,
        invitation_id=latest.id if latest else None,
        invitation_state=latest.state if latest else None,
        invited_at=latest.created_at if latest else None,
        sent_at=latest.sent_at if latest else None,
        reminders_sent=latest.reminders_sent if latest else 0,
        next_action_at=latest.next_action_at if latest and latest.state in LIVE_STATES else None,
        expires_at=latest.expires_at if latest else None,
        first_signed_in_at=access.first_signed_in_at if access else None,
        disabled_at=access.disabled_at if access else None,
        last_error=latest.last_error if latest else None,
    )


def timeline(
    practice_id: int, *, invitation_id: int | None = None, client_id: int | None = None
) -> list[dict[str, Any]]:
    """Audit events of one invitation, or of every invitation and action of one client."""
    practice = lookup.practice(practice_id)
    if invitation_id is not None:
        cond = AuditEvent.invitation == lookup.invitation(practice.id, invitation_id).id
    elif client_id is not None:
        cond = AuditEvent.client == lookup.client(practice.id, client_id).id
    else:
        raise InvalidInput("timeline needs invitation_id or client_id", field="invitation_id")
    rows = AuditEvent.select().where(cond & (AuditEvent.practice == practice.id)).order_by(AuditEvent.id)
    return [
        {
            "at": row.at.isoformat(),
            "actor": row.actor,
            "action": row.action,
            "from_state": row.from_state,
            "to_state": row.to_state,
            "invitation_id": row.invitation_id,
            "detail": json.loads(row.detail) if row.detail else None,
        }
        for row in rows
    ]
