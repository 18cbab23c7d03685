"""Inviting a client, and what a client's link and sign-in do to the invitation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.core import audit, clock, idempotency, passwords, tokens, validate
from engine.core.db import write
from engine.core.errors import (
    AccessDisabled,
    AlreadySignedIn,
    NoConsent,
    NoEmail,
    NotInvited,
    PortalOff,
    TokenUsed,
)
from engine.core.models import Client, Invitation, PortalAccess, Practice, Token
from engine.core.settings import get_settings
from engine.operations import lookup, roles
from workflows.invitation import Event, State, transition

logger = logging.getLogger("invites.api")


def nudge(invitation_ids: list[int]) -> int:
    """Tell the workers to look at these invitations now (after the commit, never before).

    A failed send loses nothing: the row is committed with a lease, and the sweep picks it up
    when the lease runs out.
    """
    from workflows.actors import enqueue_steps

    return enqueue_steps(invitation_ids)


def open_invitation(
    practice: Practice,
    client: Client,
    *,
    actor: str,
    now: datetime,
    message: str | None = None,
    kind: str = "invite",
) -> Invitation:
    """Inside a write transaction: the client's live invitation, or a new queued one.

    Checks every rule first (portal on, an email with consent, not signed in yet), so a refusal
    writes nothing. The caller nudges the returned invitation after its commit.
    """
    if not practice.portal_enabled:
        raise PortalOff("the client portal is switched off for this practice")
    access = lookup.access(client, now)
    address = access.portal_email or client.primary_email
    if not address:
        raise NoEmail("the client has no email address for portal access", client_id=client.id)
    if not client.email_consent:
        raise NoConsent("the client's email notifications are switched off", client_id=client.id)
    if access.first_signed_in_at is not None and access.disabled_at is None:
        # The link is in the message too, so every door's one-line refusal shows it (P12).
        raise AlreadySignedIn(
            f"the client has signed in already: share the portal link instead, {practice.portal_url}",
            portal_url=practice.portal_url,
        )
    invitation = lookup.live_invitation(client.id)
    if invitation is None:
        if access.disabled_at is not None:  # a new invitation re-enables access (P14)
            PortalAccess.update(disabled_at=None, updated_at=now).where(PortalAccess.client == client.id).execute()
            audit.record(practice_id=practice.id, client_id=client.id, actor=actor, action="access_enabled", now=now)
        invitation = Invitation.create(
            practice=practice.id,
            client=client.id,
            email=address,
            state=State.QUEUED.value,
            next_action_at=now,
            # The caller's nudge owns the step until the lease runs out; then the sweep does.
            lease_until=now + timedelta(seconds=get_settings().step_lease_s),
            kind=kind,
            custom_message=message,
            created_by=actor,
            created_at=now,
        )
        audit.record(practice_id=practice.id, client_id=client.id, invitation_id=invitation.id, actor=actor,
                     action="invited", now=now, detail={"kind": kind, "to": address})
    return invitation


def invite(
    practice_id: int,
    client_id: int,
    *,
    by: str,
    idempotency_key: str | None = None,
    message: str | None = None,
    now: datetime | None = None,
) -> Invitation:
    """Invite an existing client to the portal (P1, P2, P4); returns the live invitation.

    At most one invitation per client is live: inviting again returns it. With an
    ``idempotency_key`` (kept 24 h) a repeat returns the first result, and the same key with
    other parameters raises ``IdempotencyConflict``.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "invite")
    text = validate.message(message)
    key = None if idempotency_key is None else idempotency.check_key(idempotency_key)

    def attempt() -> Invitation:
        with write():
            practice = lookup.practice(practice_id)
            client = lookup.client(practice.id, client_id)
            if key is None:
                return open_invitation(practice, client, actor=actor, now=now, message=text)
            digest = idempotency.fingerprint("invite", client_id=client.id, message=text)
            seen = idempotency.recall(practice.id, key, digest, now=now)
            if seen is not None:
                return Invitation.get_by_id(seen.invitation_id)
            invitation = open_invitation(practice, client, actor=actor, now=now, message=text)
            idempotency.remember(practice.id, key, digest, now=now, client_id=client.id,
                                 invitation_id=invitation.id)
            return invitation

    # A concurrent call may create the invitation or the key first: the second pass sees it.
    invitation = idempotency.run_once(attempt)
    nudge([invitation.id])
    return invitation


def _portal_on(practice_id: int) -> Practice:
    practice = lookup.practice(practice_id)
    if not practice.portal_enabled:
        raise PortalOff("the client portal is switched off for this practice")
    return practice


def _sign_in(practice_id: int, client: Client, *, actor: str, now: datetime) -> None:
    """Inside a write transaction: record a sign-in; a live invitation ends (W1)."""
    PortalAccess.update(last_signed_in_at=now, updated_at=now).where(PortalAccess.client == client.id).execute()
    PortalAccess.update(first_signed_in_at=now).where(
        (PortalAccess.client == client.id) & PortalAccess.first_signed_in_at.is_null()
    ).execute()
    live = lookup.live_invitation(client.id)
    if live is not None:
        tokens.revoke(client_id=client.id, purpose="invite", reason="signed_in", now=now)
        transition(live, Event.SIGN_IN, actor=actor, now=now)
    else:
        audit.record(practice_id=practice_id, client_id=client.id, actor=actor, action="signed_in", now=now)


def record_sign_in(practice_id: int, client_id: int, *, by: str = "system:portal", now: datetime | None = None) -> None:
    """The portal reports that a client signed in. Ends the workflow: no reminder after it."""
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "sign_in")
    with write():
        _portal_on(practice_id)
        client = lookup.client(practice_id, client_id)
        access = PortalAccess.get_or_none(PortalAccess.client == client.id)
        if access is None or (access.password_set_at is None and lookup.latest_invitation(client.id) is None):
            raise NotInvited("the client has no portal access yet", client_id=client.id)
        if access.disabled_at is not None:
            raise AccessDisabled("portal access is disabled for this client", client_id=client.id)
        _sign_in(practice_id, client, actor=actor, now=now)
    logger.info("client signed in", extra={"action": "signed_in", "client_id": client_id})


@dataclass(frozen=True)
class TokenInfo:
    """What opening a link may show: whose link it is and until when it works."""

    client_id: int
    client_name: str
    purpose: str
    expires_at: datetime


def verify_token(practice_id: int, token: str, *, now: datetime | None = None) -> TokenInfo:
    """Check a link's token without using it (opening a link changes nothing)."""
    now = now or clock.now()
    _portal_on(practice_id)
    row = tokens.find(practice_id, token, now)
    client = Client.get_by_id(row.client_id)
    return TokenInfo(client.id, client.name, row.purpose, row.expires_at)


def redeem_token(
    practice_id: int, token: str, password: str, *, by: str = "system:portal", now: datetime | None = None
) -> int:
    """Use a set/reset-password link once: set the password and sign the client in (P7).

    Returns the client id. Every other pending link of the client dies with it.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "redeem_token")
    secret = passwords.check_new(password)
    hashed = passwords.hash_password(secret)
    with write():
        _portal_on(practice_id)
        row = tokens.find(practice_id, token, now)
        client = Client.get_by_id(row.client_id)
        access = lookup.access(client, now)
        if access.disabled_at is not None:
            raise AccessDisabled("portal access is disabled for this client", client_id=client.id)
        used = Token.update(used_at=now).where((Token.id == row.id) & Token.used_at.is_null()).execute()
        if used != 1:
            raise TokenUsed("this link was used already")
        tokens.revoke(client_id=client.id, reason="password_set", now=now)
        PortalAccess.update(password_hash=hashed, password_set_at=now, updated_at=now).where(
            PortalAccess.client == client.id
        ).execute()
        audit.record(practice_id=practice_id, client_id=client.id, invitation_id=row.invitation_id,
                     actor=f"client:{client.id}", action="password_set", now=now, detail={"via": actor})
        _sign_in(practice_id, client, actor=f"client:{client.id}", now=now)
    return int(client.id)
