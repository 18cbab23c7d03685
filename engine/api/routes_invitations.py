"""Invitations and access: invite, resend, disable, emails, permissions, shares, resets (P4–P14)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path

from engine.api.auth import Inviting, PortalOrStaff, Staff, with_db
from engine.api.schemas import (
    EmailIn,
    InvitationCreate,
    InvitationOut,
    MessageIn,
    PermissionsIn,
    PermissionsOut,
    PrimaryEmailIn,
    ShareIn,
    TimelineEvent,
)
from engine.operations import access, invitations, password_resets, sharing, status
from engine.operations.access import EmailChange
from engine.operations.password_resets import ResetRequest
from engine.operations.sharing import ShareResult
from engine.operations.status import PortalStatus

router = APIRouter(prefix="/v1", tags=["invitations"])
Id = Annotated[int, Path(gt=0, lt=2**63)]
IdempotencyKey = Annotated[str | None, Header(max_length=255, description="docs/api.md: idempotency")]


@router.post("/invitations", status_code=201, response_model=InvitationOut)
@with_db
def invite(body: InvitationCreate, who: Inviting, idempotency_key: IdempotencyKey = None) -> InvitationOut:
    """Invite an existing client (P1, P2, P4). A client with a live invitation gets that one back;
    a client whose access was disabled is re-enabled (P14)."""
    row = invitations.invite(who.practice, body.client_id, by=who.actor, message=body.message,
                             idempotency_key=idempotency_key)
    return InvitationOut.of(row)


@router.get("/invitations/{invitation_id}/timeline", response_model=list[TimelineEvent])
@with_db
def invitation_timeline(invitation_id: Id, who: Staff) -> list[dict[str, object]]:
    return status.timeline(who.practice, invitation_id=invitation_id)


@router.post("/clients/{client_id}/resend", status_code=201, response_model=InvitationOut)
@with_db
def resend(client_id: Id, body: MessageIn, who: Staff) -> InvitationOut:
    """A new invitation with a full lifetime; every earlier link dies (P11). After the first
    sign-in: 409 `already_signed_in` with the `portal_url` to share instead (P12)."""
    return InvitationOut.of(access.resend(who.practice, client_id, by=who.actor, message=body.message))


@router.post("/clients/{client_id}/disable", response_model=PortalStatus)
@with_db
def disable(client_id: Id, who: Staff) -> PortalStatus:
    """Disable portal access: links die, follow-ups stop (P14). `POST /v1/invitations` re-enables."""
    return access.disable(who.practice, client_id, by=who.actor)


@router.put("/clients/{client_id}/portal-email", response_model=EmailChange)
@with_db
def change_portal_email(client_id: Id, body: EmailIn, who: Staff) -> EmailChange:
    """Change the address portal access uses, alone (P9)."""
    return access.change_portal_email(who.practice, client_id, body.email, by=who.actor)


@router.put("/clients/{client_id}/primary-email", response_model=EmailChange)
@with_db
def change_primary_email(client_id: Id, body: PrimaryEmailIn, who: Staff) -> EmailChange:
    """Change the primary email; says whether portal access was affected (P10)."""
    return access.change_primary_email(who.practice, client_id, body.email, by=who.actor,
                                       portal_action=body.portal_action)


def _permissions(practice_id: int, client_id: int, by: str) -> PermissionsOut:
    stored = access.permissions(practice_id, client_id, by=by)
    effective = access.effective_permissions(practice_id, client_id, by=by)
    return PermissionsOut(client_id=client_id, permissions=stored.to_dict(), effective=effective.to_dict())


@router.get("/clients/{client_id}/permissions", response_model=PermissionsOut)
@with_db
def get_permissions(client_id: Id, who: PortalOrStaff) -> PermissionsOut:
    """The four permissions as stored and as in effect now (P13)."""
    return _permissions(who.practice, client_id, who.actor)


@router.patch("/clients/{client_id}/permissions", response_model=PermissionsOut)
@with_db
def set_permissions(client_id: Id, body: PermissionsIn, who: Staff) -> PermissionsOut:
    """Change some of the four permissions; paying needs billing and online payments (P13)."""
    access.set_permissions(who.practice, client_id, by=who.actor, **body.model_dump())
    return _permissions(who.practice, client_id, who.actor)


@router.post("/clients/{client_id}/shares", response_model=ShareResult)
@with_db
def share(client_id: Id, body: ShareIn, who: Inviting) -> ShareResult:
    """Documents were shared with the client: a client without access is invited (P5)."""
    return sharing.share_documents(who.practice, client_id, by=who.actor, documents=body.documents,
                                   message=body.message)


@router.post("/clients/{client_id}/password-resets", status_code=202, response_model=ResetRequest)
@with_db
def password_reset(client_id: Id, who: PortalOrStaff) -> ResetRequest:
    """Email the client a single-use password-reset link (P7); refused before the first sign-in."""
    return password_resets.request_password_reset(who.practice, client_id, by=who.actor)
