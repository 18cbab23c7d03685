"""Asking for a password reset (P7): an outbox row now, the email and its link from a worker.

The token is issued when the email is built (``workflows.reset_emails.deliver``), inside that write
transaction, so no raw token ever sits in the database or in a message. A newer request
supersedes the older unsent email and kills the older links at once.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import peewee

from engine.core import audit, clock, tokens
from engine.core.db import write
from engine.core.errors import AccessDisabled, NoConsent, NoEmail, NotSignedIn, PortalOff, ServiceUnavailable
from engine.core.models import OutboxEmail, PortalAccess
from engine.core.settings import get_settings
from engine.operations import lookup, roles
from workflows.delivery import message_id_for

logger = logging.getLogger("invites.resets")


@dataclass(frozen=True)
class ResetRequest:
    """A password reset that is on its way (the link itself only goes in the email)."""

    client_id: int
    outbox_id: int
    to_email: str
    #: 1 for the client's first reset request, 2 for the next…
    request_number: int
    #: How long the link will work once the email is sent.
    link_ttl_s: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def request_password_reset(
    practice_id: int, client_id: int, *, by: str, now: datetime | None = None
) -> ResetRequest:
    """Send a client who has portal access a short-lived, single-use reset link (P7).

    For a client who has signed in or set a password; one who has not gets ``NotSignedIn``
    (resend the invitation: its link sets the first password). Asking again supersedes the
    earlier request: its link stops working at once and its email, if not sent yet, never goes.
    The portal asks as ``system:portal``; staff as themselves.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "send_password_reset")
    settings = get_settings()
    for attempt in (1, 2):
        try:
            with write():
                request = _request(practice_id, client_id, actor=actor, now=now)
            break
        except peewee.IntegrityError:
            # A concurrent request took the same request number: the second pass counts it.
            if attempt == 2:
                raise
    from workflows.actors import send_outbox_email

    try:
        send_outbox_email.send(request.outbox_id)
    except Exception as exc:  # noqa: BLE001 - any broker failure: the client may ask again
        logger.warning("could not enqueue the reset email",
                       extra={"action": "reset_enqueue_failed", "client_id": request.client_id,
                              "error": type(exc).__name__})
        raise ServiceUnavailable("the reset email could not be queued; ask again in a moment") from exc
    logger.info("password reset requested", extra={"action": "password_reset_requested",
                                                   "client_id": request.client_id,
                                                   "outbox_id": request.outbox_id})
    return ResetRequest(request.client_id, request.outbox_id, request.to_email, request.request_number,
                        settings.reset_token_ttl_s)


def _request(practice_id: int, client_id: int, *, actor: str, now: datetime) -> ResetRequest:
    settings = get_settings()
    practice = lookup.practice(practice_id)
    if not practice.portal_enabled:
        raise PortalOff("the client portal is switched off for this practice")
    client = lookup.client(practice.id, client_id)
    access = PortalAccess.get_or_none(PortalAccess.client == client.id)
    if access is None or (access.first_signed_in_at is None and access.password_set_at is None):
        raise NotSignedIn("the client has not set a password yet: resend the invitation instead",
                          client_id=client.id)
    if access.disabled_at is not None:
        raise AccessDisabled("portal access is disabled for this client", client_id=client.id)
    address = access.portal_email or client.primary_email
    if not address:
        raise NoEmail("the client has no email address for portal access", client_id=client.id)
    if not client.email_consent:
        raise NoConsent("the client's email notifications are switched off", client_id=client.id)
    earlier = OutboxEmail.select().where((OutboxEmail.client == client.id) & (OutboxEmail.kind == "reset"))
    number = earlier.count() + 1
    OutboxEmail.update(status="superseded").where(
        (OutboxEmail.client == client.id) & (OutboxEmail.kind == "reset") & (OutboxEmail.status == "pending")
    ).execute()
    tokens.revoke(client_id=client.id, purpose="reset", reason="superseded", now=now)
    key = f"reset-{client.id}-{number}"
    row = OutboxEmail.create(
        practice=practice.id,
        client=client.id,
        invitation=None,
        dedupe_key=key,
        kind="reset",
        to_email=address,
        message_id=message_id_for(key, settings),
        created_at=now,
    )
    audit.record(practice_id=practice.id, client_id=client.id, actor=actor, action="password_reset_requested",
                 now=now, detail={"request": number, "to": address})
    return ResetRequest(client.id, row.id, address, number, settings.reset_token_ttl_s)
