"""Staff operations on one client's portal access: resend, disable, email changes (P9-P12, P14).

Each call checks the actor's role, validates its input, then does all of its writes in one
transaction (a refusal raised inside it rolls everything back), and nudges the new invitation
after the commit. Revoking an invitation is a workflow transition plus dead tokens: a step
already queued for it re-reads the row, finds it revoked, and sends nothing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from engine.core import audit, clock, tokens, validate
from engine.core.db import is_postgres, write
from engine.core.errors import InvalidInput, NotInvited, PermissionRule
from engine.core.models import Client, Invitation, OutboxEmail, PortalAccess
from engine.mail import validate_address
from engine.operations import lookup, roles
from engine.operations.invitations import nudge, open_invitation
from engine.operations.status import PortalStatus, portal_status
from workflows.invitation import LIVE_STATES, Event, transition

logger = logging.getLogger("invites.access")

_LIVE = [s.value for s in LIVE_STATES]
PORTAL_ACTIONS = ("keep", "disable_and_resend")


@dataclass(frozen=True)
class EmailChange:
    """What an email change did to a client's portal access (P9, P10)."""

    client_id: int
    changed: str  # "portal" or "primary"
    previous_email: str | None
    new_email: str
    #: The address portal access uses from now on.
    portal_email: str | None
    #: The client had live or active access on the old address (P10: staff are told).
    access_affected: bool
    #: none | resent | keep | disable_and_resend
    portal_action: str
    revoked_invitation_id: int | None = None
    invitation_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- helpers shared by the staff operations ------------------------------------------------

def live_for_update(client_id: int) -> Invitation | None:
    """Inside a write transaction: the client's live invitation, locked on PostgreSQL.

    The lock makes a step that is finishing wait for us (or us for it), so the revoke's
    compare-and-set does not lose to it with a ``Conflict``.
    """
    query = Invitation.select().where((Invitation.client == client_id) & Invitation.state.in_(_LIVE))
    if is_postgres():
        query = query.for_update()
    return query.first()


def revoke_invitation(invitation: Invitation, *, actor: str, now: datetime, reason: str) -> None:
    """Inside a write transaction: end a live invitation and kill its links and unsent emails."""
    tokens.revoke(client_id=invitation.client_id, invitation_id=invitation.id, reason=reason, now=now)
    transition(invitation, Event.REVOKE, actor=actor, now=now, detail={"reason": reason})
    OutboxEmail.update(status="superseded", last_error=None).where(
        (OutboxEmail.invitation == invitation.id) & (OutboxEmail.status == "pending")
    ).execute()


def revoke_links(client_id: int, *, reason: str, now: datetime) -> int:
    """Inside a write transaction: every link of the client dies, and no owed reset email goes."""
    OutboxEmail.update(status="superseded").where(
        (OutboxEmail.client == client_id) & (OutboxEmail.kind == "reset") & (OutboxEmail.status == "pending")
    ).execute()
    return tokens.revoke(client_id=client_id, reason=reason, now=now)


def _has_active_access(access: PortalAccess | None, live: Invitation | None) -> bool:
    signed_in = access is not None and access.first_signed_in_at is not None and access.disabled_at is None
    return live is not None or signed_in


# --- resend (P11, P12) ------------------------------------------------------------------------

def resend(
    practice_id: int,
    client_id: int,
    *,
    by: str,
    message: str | None = None,
    now: datetime | None = None,
) -> Invitation:
    """Send a client a fresh invitation, with an optional personal message (P11).

    Only while the client has not signed in: after that ``AlreadySignedIn`` carries the
    practice's ``portal_url`` to share instead (P12). Every earlier link of the client dies,
    the live invitation (if any) is revoked, and the new one gets a full lifetime and a fresh
    reminder schedule. A client never invited gets ``NotInvited`` (use ``invite``).
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "resend")
    text = validate.message(message)
    with write():
        practice = lookup.practice(practice_id)
        client = lookup.client(practice.id, client_id)
        latest = lookup.latest_invitation(client.id)
        if latest is None:
            raise NotInvited("the client was never invited: invite them instead", client_id=client.id)
        live = live_for_update(client.id)
        if live is not None:
            revoke_invitation(live, actor=actor, now=now, reason="resent")
        revoke_links(client.id, reason="resent", now=now)
        # open_invitation refuses a signed-in client (P12), a portal that is off, a missing
        # email or consent; raising here rolls the revokes above back with everything else.
        invitation = open_invitation(practice, client, actor=actor, now=now, message=text, kind=latest.kind)
        audit.record(practice_id=practice.id, client_id=client.id, invitation_id=invitation.id, actor=actor,
                     action="resent", now=now, detail={"replaces": latest.id, "message": text is not None})
    nudge([invitation.id])
    logger.info("invitation resent", extra={"action": "resent", "invitation_id": invitation.id,
                                            "client_id": client.id})
    return invitation


# --- disable (P14) ------------------------------------------------------------------------------

def disable(practice_id: int, client_id: int, *, by: str, now: datetime | None = None) -> PortalStatus:
    """Disable a client's portal access at once: links die, follow-ups stop (P14).

    A step already in the queue finds the invitation revoked and sends nothing. Disabling a
    disabled client changes nothing. Inviting the client again re-enables access.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "disable")
    with write():
        practice = lookup.practice(practice_id)
        client = lookup.client(practice.id, client_id)
        access = lookup.access(client, now)
        if access.disabled_at is None:
            live = live_for_update(client.id)
            if live is not None:
                revoke_invitation(live, actor=actor, now=now, reason="disabled")
            revoke_links(client.id, reason="disabled", now=now)
            PortalAccess.update(disabled_at=now, updated_at=now).where(PortalAccess.client == client.id).execute()
            audit.record(practice_id=practice.id, client_id=client.id, invitation_id=live.id if live else None,
                         actor=actor, action="access_disabled", now=now)
            logger.info("portal access disabled", extra={"action": "access_disabled", "client_id": client.id})
    return portal_status(practice_id, client_id)


# --- email changes (P9, P10) ---------------------------------------------------------------------

def change_portal_email(
    practice_id: int, client_id: int, new_email: str, *, by: str, now: datetime | None = None
) -> EmailChange:
    """Change the address used for portal access alone, not the primary email (P9).

    Pending links die; a client who was waiting on an invitation gets a new one at the new
    address (same kind and message). A signed-in client just signs in with the new address.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "change_portal_email")
    address = validate_address(new_email)
    with write():
        practice = lookup.practice(practice_id)
        client = lookup.client(practice.id, client_id)
        access = lookup.access(client, now)
        previous = access.portal_email or client.primary_email
        live = live_for_update(client.id)
        affected = _has_active_access(access, live)
        if previous is not None and previous.lower() == address.lower():
            return EmailChange(client.id, "portal", previous, address, previous, affected, "none")
        PortalAccess.update(portal_email=address, updated_at=now).where(PortalAccess.client == client.id).execute()
        audit.record(practice_id=practice.id, client_id=client.id, actor=actor, action="portal_email_changed",
                     now=now, detail={"from": previous, "to": address})
        revoke_links(client.id, reason="email_changed", now=now)
        invitation = None
        if live is not None:
            revoke_invitation(live, actor=actor, now=now, reason="email_changed")
            invitation = open_invitation(practice, client, actor=actor, now=now, message=live.custom_message,
                                         kind=live.kind)
    if invitation is not None:
        nudge([invitation.id])
    return EmailChange(client.id, "portal", previous, address, address, affected,
                       "resent" if invitation else "none",
                       revoked_invitation_id=live.id if live else None,
                       invitation_id=invitation.id if invitation else None)


def change_primary_email(
    practice_id: int,
    client_id: int,
    new_email: str,
    *,
    by: str,
    portal_action: str = "keep",
    now: datetime | None = None,
) -> EmailChange:
    """Change a client's primary email and say whether portal access was affected (P10).

    ``access_affected`` is true when the client had live or active portal access on the old
    primary address. ``portal_action``:

    - ``"keep"``: portal access stays on the address it used (if it followed the primary
      email, the old address is now stored as the portal email);
    - ``"disable_and_resend"``: the old access is revoked (links, live invitation, password)
      and an invitation goes to the new address, all in one step.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "change_primary_email")
    if portal_action not in PORTAL_ACTIONS:
        raise InvalidInput(f"portal_action must be one of {', '.join(PORTAL_ACTIONS)}", field="portal_action")
    address = validate_address(new_email)
    with write():
        practice = lookup.practice(practice_id)
        client = lookup.client(practice.id, client_id)
        access = PortalAccess.get_or_none(PortalAccess.client == client.id)
        previous = client.primary_email
        live = live_for_update(client.id)
        portal_before = (access.portal_email if access else None) or previous
        on_old = portal_before is not None and previous is not None and portal_before.lower() == previous.lower()
        affected = on_old and _has_active_access(access, live)
        if previous is not None and previous.lower() == address.lower():
            return EmailChange(client.id, "primary", previous, address, portal_before, affected, "none")
        Client.update(primary_email=address, updated_at=now).where(Client.id == client.id).execute()
        audit.record(practice_id=practice.id, client_id=client.id, actor=actor, action="primary_email_changed",
                     now=now, detail={"from": previous, "to": address, "portal_action": portal_action})
        invitation = None
        if portal_action == "keep":
            portal_after = portal_before
            if affected and access is not None and access.portal_email is None:
                # Portal access followed the primary email: pin it to the address it was using.
                PortalAccess.update(portal_email=previous, updated_at=now).where(
                    PortalAccess.client == client.id
                ).execute()
        else:
            if live is not None:
                revoke_invitation(live, actor=actor, now=now, reason="primary_email_changed")
            revoke_links(client.id, reason="primary_email_changed", now=now)
            if access is not None:
                # The old access is revoked: its password and sign-in belong to the old address.
                PortalAccess.update(portal_email=None, password_hash=None, password_set_at=None,
                                    first_signed_in_at=None, updated_at=now).where(
                    PortalAccess.client == client.id
                ).execute()
                audit.record(practice_id=practice.id, client_id=client.id, actor=actor, action="access_revoked",
                             now=now, detail={"reason": "primary_email_changed", "was_signed_in":
                                              access.first_signed_in_at is not None})
            client = lookup.client(practice.id, client.id)
            invitation = open_invitation(practice, client, actor=actor, now=now,
                                         kind=live.kind if live else "invite")
            portal_after = address
    if invitation is not None:
        nudge([invitation.id])
    return EmailChange(client.id, "primary", previous, address, portal_after, affected, portal_action,
                       revoked_invitation_id=live.id if live and invitation else None,
                       invitation_id=invitation.id if invitation else None)


# --- permissions (P13) ----------------------------------------------------------------------------

PERMISSIONS = ("can_request_appointments", "can_message", "can_view_billing", "can_pay")


@dataclass(frozen=True)
class Permissions:
    """A client's four portal permissions (P13)."""

    can_request_appointments: bool
    can_message: bool
    can_view_billing: bool
    can_pay: bool

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


#: What a client may do while access is disabled or the portal is off.
NO_PERMISSIONS = Permissions(False, False, False, False)


def _stored(access: PortalAccess | None) -> Permissions:
    if access is None:  # no row yet: the model's defaults are what the client would get
        return Permissions(*(bool(getattr(PortalAccess, name).default) for name in PERMISSIONS))
    return Permissions(*(bool(getattr(access, name)) for name in PERMISSIONS))


def set_permissions(
    practice_id: int,
    client_id: int,
    *,
    by: str,
    can_request_appointments: bool | None = None,
    can_message: bool | None = None,
    can_view_billing: bool | None = None,
    can_pay: bool | None = None,
    now: datetime | None = None,
) -> Permissions:
    """Change some of a client's permissions (None leaves one as it is); returns all four.

    Paying needs billing documents *and* the practice's online payments: a request that would
    break the rule raises ``PermissionRule`` and changes nothing.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "set_permissions")
    asked = {
        name: value
        for name, value in zip(PERMISSIONS, (can_request_appointments, can_message, can_view_billing, can_pay),
                               strict=True)
        if value is not None
    }
    for name, value in asked.items():
        if not isinstance(value, bool):
            raise InvalidInput(f"{name} must be true or false", field=name)
    if not asked:
        raise InvalidInput("no permission to change was given", field="permissions")
    with write():
        practice = lookup.practice(practice_id)
        client = lookup.client(practice.id, client_id)
        before = _stored(PortalAccess.get_or_none(PortalAccess.client == client.id))
        after = Permissions(**{**before.to_dict(), **asked})
        if after.can_pay and not after.can_view_billing:
            raise PermissionRule("paying needs the billing documents permission too", rule="pay_needs_billing")
        if after.can_pay and not practice.online_payments:
            raise PermissionRule("paying needs the practice's online payments to be set up",
                                 rule="pay_needs_online_payments")
        lookup.access(client, now)
        PortalAccess.update(updated_at=now, **after.to_dict()).where(PortalAccess.client == client.id).execute()
        changed = {k: v for k, v in after.to_dict().items() if before.to_dict()[k] != v}
        audit.record(practice_id=practice.id, client_id=client.id, actor=actor, action="permissions_set", now=now,
                     detail=changed or None)
    return after


def permissions(practice_id: int, client_id: int, *, by: str) -> Permissions:
    """The permissions staff set for a client, whatever the access and portal state."""
    roles.authorize(practice_id, by, "view")
    client = lookup.client(lookup.practice(practice_id).id, client_id)
    return _stored(PortalAccess.get_or_none(PortalAccess.client == client.id))


def effective_permissions(practice_id: int, client_id: int, *, by: str = "system:portal") -> Permissions:
    """What the client may do in the portal right now (what the portal should enforce).

    None while access is disabled or the portal is off (P14, P15); paying also needs the
    practice's online payments to be set up at this moment, not only when it was granted.
    """
    roles.authorize(practice_id, by, "view")
    practice = lookup.practice(practice_id)
    client = lookup.client(practice.id, client_id)
    access = PortalAccess.get_or_none(PortalAccess.client == client.id)
    if not practice.portal_enabled or (access is not None and access.disabled_at is not None):
        return NO_PERMISSIONS
    stored = _stored(access)
    can_pay = stored.can_pay and stored.can_view_billing and bool(practice.online_payments)
    return Permissions(stored.can_request_appointments, stored.can_message, stored.can_view_billing, can_pay)
