"""Clients: create (optionally inviting, P3), read, update, consent, status and timeline (P2, P8)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path

from engine.api.auth import Inviting, Staff, with_db
from engine.api.schemas import ClientCreate, ClientOut, ClientUpdate, ConsentIn, TimelineEvent
from engine.operations import lookup, practices, status
from engine.operations.practices import ConsentChange
from engine.operations.status import PortalStatus

router = APIRouter(prefix="/v1/clients", tags=["clients"])
ClientId = Annotated[int, Path(gt=0, lt=2**63)]
IdempotencyKey = Annotated[str | None, Header(max_length=255, description="docs/api.md: idempotency")]


@router.post("", status_code=201, response_model=ClientOut)
@with_db
def create_client(body: ClientCreate, who: Inviting, idempotency_key: IdempotencyKey = None) -> ClientOut:
    """A new client profile; with `invite` the welcome invitation goes at once, or nothing is made (P3)."""
    row = practices.create_client(who.practice, body.name, by=who.actor, email=body.email, consent=body.consent,
                                  invite=body.invite, idempotency_key=idempotency_key)
    return ClientOut.of(row)


@router.get("/{client_id}", response_model=ClientOut)
@with_db
def get_client(client_id: ClientId, who: Staff) -> ClientOut:
    return ClientOut.of(lookup.client(lookup.practice(who.practice).id, client_id))


@router.patch("/{client_id}", response_model=ClientOut)
@with_db
def update_client(client_id: ClientId, body: ClientUpdate, who: Inviting) -> ClientOut:
    """Change the name or the email consent (the primary email has its own resource, P10)."""
    return ClientOut.of(practices.update_client(who.practice, client_id, by=who.actor, name=body.name,
                                                consent=body.consent))


@router.put("/{client_id}/consent", response_model=ConsentChange)
@with_db
def set_consent(client_id: ClientId, body: ConsentIn, who: Inviting) -> ConsentChange:
    """Give or withdraw email consent (P2); withdrawing revokes a pending invitation."""
    return practices.set_email_consent(who.practice, client_id, body.consent, by=who.actor)


@router.get("/{client_id}/status", response_model=PortalStatus)
@with_db
def get_status(client_id: ClientId, who: Staff) -> PortalStatus:
    """The client's portal status: never invited, invited, signed in, expired, disabled, failed (P8)."""
    return status.portal_status(who.practice, client_id)


@router.get("/{client_id}/timeline", response_model=list[TimelineEvent])
@with_db
def get_timeline(client_id: ClientId, who: Staff) -> list[dict[str, object]]:
    """Every audit event of the client and its invitations, oldest first, with who did it (P17)."""
    return status.timeline(who.practice, client_id=client_id)
