"""Sharing documents grants portal access (P5): the invitation goes as part of the share."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import peewee

from engine.core import audit, clock, validate
from engine.core.db import write
from engine.core.errors import AccessDisabled
from engine.core.models import Invitation, PortalAccess
from engine.operations import lookup, roles
from engine.operations.invitations import nudge, open_invitation

logger = logging.getLogger("invites.sharing")

MAX_DOCUMENTS = 10_000


@dataclass(frozen=True)
class ShareResult:
    """What a share did about portal access."""

    client_id: int
    #: A new invitation went with this share.
    invited: bool
    #: invited | already_invited (a live invitation now says documents wait) | has_access
    outcome: str
    invitation_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def share_documents(
    practice_id: int,
    client_id: int,
    *,
    by: str,
    documents: int = 1,
    message: str | None = None,
    now: datetime | None = None,
) -> ShareResult:
    """Record that documents were shared with a client, inviting the client if needed (P5).

    A client without access gets an invitation saying documents are waiting; a client with a
    live invitation keeps it (its reminders now mention the documents); a signed-in client
    gets no invitation. The same refusals as ``invite`` apply (no email, no consent, portal
    off); a client whose access staff disabled is refused with ``AccessDisabled``.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "share_documents")
    text = validate.message(message)
    documents = validate.int_between(documents, 1, MAX_DOCUMENTS, field="documents")
    for attempt in (1, 2):
        try:
            with write():
                result = _share(practice_id, client_id, actor=actor, documents=documents, text=text, now=now)
            break
        except peewee.IntegrityError:
            # A concurrent invite created the live invitation first: the second pass sees it.
            if attempt == 2:
                raise
    if result.invited and result.invitation_id is not None:
        nudge([result.invitation_id])
    logger.info("documents shared", extra={"action": "documents_shared", "client_id": result.client_id,
                                           "outcome": result.outcome})
    return result


def _share(practice_id: int, client_id: int, *, actor: str, documents: int, text: str | None,
           now: datetime) -> ShareResult:
    practice = lookup.practice(practice_id)
    client = lookup.client(practice.id, client_id)
    access = PortalAccess.get_or_none(PortalAccess.client == client.id)
    if access is not None and access.disabled_at is not None:
        raise AccessDisabled("portal access is disabled for this client", client_id=client.id)
    detail: dict[str, Any] = {"documents": documents}
    if access is not None and access.first_signed_in_at is not None:
        audit.record(practice_id=practice.id, client_id=client.id, actor=actor, action="documents_shared",
                     now=now, detail=detail)
        return ShareResult(client.id, False, "has_access")
    live = lookup.live_invitation(client.id)
    invitation = open_invitation(practice, client, actor=actor, now=now, message=text, kind="share")
    if live is not None and invitation.kind != "share":
        # Not a state change: only what the coming reminders say.
        Invitation.update(kind="share").where(Invitation.id == invitation.id).execute()
    audit.record(practice_id=practice.id, client_id=client.id, invitation_id=invitation.id, actor=actor,
                 action="documents_shared", now=now, detail=detail)
    return ShareResult(client.id, live is None, "invited" if live is None else "already_invited", invitation.id)
