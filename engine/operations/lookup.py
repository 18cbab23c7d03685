"""Scoped lookups: every query names the practice, so another practice's id is "not found"."""

from __future__ import annotations

from datetime import datetime

from engine.core.errors import UnknownClient, UnknownInvitation, UnknownPractice
from engine.core.models import Client, Invitation, PortalAccess, Practice
from engine.core.validate import positive_id
from workflows.invitation import LIVE_STATES

_LIVE = [s.value for s in LIVE_STATES]


def practice(practice_id: object) -> Practice:
    pid = positive_id(practice_id, field="practice_id")
    row = Practice.get_or_none(Practice.id == pid)
    if row is None:
        raise UnknownPractice("no practice with that id", practice_id=pid)
    return row


def client(practice_id: int, client_id: object) -> Client:
    cid = positive_id(client_id, field="client_id")
    row = Client.get_or_none((Client.id == cid) & (Client.practice == practice_id))
    if row is None:
        raise UnknownClient("no client with that id in this practice", client_id=cid)
    return row


def invitation(practice_id: int, invitation_id: object) -> Invitation:
    iid = positive_id(invitation_id, field="invitation_id")
    row = Invitation.get_or_none((Invitation.id == iid) & (Invitation.practice == practice_id))
    if row is None:
        raise UnknownInvitation("no invitation with that id in this practice", invitation_id=iid)
    return row


def access(client_row: Client, now: datetime) -> PortalAccess:
    """The client's portal access row, created (without access) on first need."""
    row = PortalAccess.get_or_none(PortalAccess.client == client_row.id)
    if row is None:
        row = PortalAccess.create(
            client=client_row.id, practice=client_row.practice_id, updated_at=now
        )
    return row


def live_invitation(client_id: int) -> Invitation | None:
    return (
        Invitation.select()
        .where((Invitation.client == client_id) & Invitation.state.in_(_LIVE))
        .first()
    )


def latest_invitation(client_id: int) -> Invitation | None:
    return (
        Invitation.select()
        .where(Invitation.client == client_id)
        .order_by(Invitation.id.desc())
        .first()
    )
