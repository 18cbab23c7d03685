"""Every refusal the engine makes: one hierarchy, one base class, a stable ``code`` each."""

from __future__ import annotations

from typing import Any


class InviteError(Exception):
    """Base of every error the engine raises on purpose."""

    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class NotFound(InviteError):
    """The thing does not exist in this practice (another practice's ids look the same)."""

    code = "not_found"


class UnknownPractice(NotFound):
    """No practice with that id."""

    code = "unknown_practice"


class UnknownClient(NotFound):
    """No client with that id in this practice (P1)."""

    code = "unknown_client"


class UnknownStaff(NotFound):
    """No active staff user with that id in this practice."""

    code = "unknown_staff"


class UnknownInvitation(NotFound):
    """No invitation with that id in this practice."""

    code = "unknown_invitation"


class UnknownApiKey(NotFound):
    """No live API key with that id."""

    code = "unknown_api_key"


class InvalidInput(InviteError):
    """A value is malformed or out of range."""

    code = "invalid_input"


class MalformedEmail(InvalidInput):
    """The email address is not one we can deliver to."""

    code = "malformed_email"


class NoEmail(InviteError):
    """The client has no email address for portal access (P2)."""

    code = "no_email"


class NoConsent(InviteError):
    """The client's email notifications are switched off (P2)."""

    code = "no_consent"


class PortalOff(InviteError):
    """The portal is switched off for the whole practice (P15)."""

    code = "portal_off"


class AccessDisabled(InviteError):
    """Portal access is disabled for this client (P14)."""

    code = "access_disabled"


class AlreadySignedIn(InviteError):
    """The client has signed in already: share the portal link instead (P12)."""

    code = "already_signed_in"


class NotInvited(InviteError):
    """The client has no invitation to act on."""

    code = "not_invited"


class IllegalTransition(InviteError):
    """The invitation's state does not allow that event."""

    code = "illegal_transition"


class Conflict(InviteError):
    """The row changed under us, or an idempotency key came back with other parameters."""

    code = "conflict"


class IdempotencyConflict(Conflict):
    """The idempotency key was used before with different parameters."""

    code = "idempotency_conflict"


class PermissionRule(InviteError):
    """The permissions asked for break a rule (P13: paying needs billing and online payments)."""

    code = "permission_rule"


class Forbidden(InviteError):
    """The staff user's role does not allow this (P17)."""

    code = "forbidden"


class Unauthenticated(InviteError):
    """No API key, or one that is malformed, unknown or revoked (HTTP API)."""

    code = "unauthenticated"


class OutOfScope(Forbidden):
    """The API key's scopes do not cover this resource (HTTP API)."""

    code = "out_of_scope"


class TokenError(InviteError):
    """A portal link's token cannot be used."""

    code = "token_invalid"


class TokenUnknown(TokenError):
    """No such token (or one of another practice)."""

    code = "token_unknown"


class TokenExpired(TokenError):
    """The token's lifetime is over."""

    code = "token_expired"


class TokenUsed(TokenError):
    """The token was redeemed already (single use)."""

    code = "token_used"


class TokenRevoked(TokenError):
    """A resend, disable, email change or newer link made the token unusable."""

    code = "token_revoked"


class DeliveryError(InviteError):
    """Sending an email failed."""

    code = "delivery_failed"

    def __init__(self, message: str, *, smtp_code: int | None = None, **details: Any) -> None:
        super().__init__(message, smtp_code=smtp_code, **details)
        self.smtp_code = smtp_code


class TransientDeliveryError(DeliveryError):
    """Worth another try later (SMTP 4xx, connection refused or dropped, timeout)."""

    code = "delivery_transient"


class PermanentDeliveryError(DeliveryError):
    """Will never succeed as it is (SMTP 5xx: unknown mailbox, rejected)."""

    code = "delivery_permanent"


class ServiceUnavailable(InviteError):
    """A service the engine needs (database, broker) did not answer."""

    code = "service_unavailable"


class WrongPassword(InviteError):
    """The password given at sign-in is not the client's portal password (the doors' refusal)."""

    code = "wrong_password"


class NotSignedIn(InviteError):
    """The client has not signed in yet: a password reset needs access in use (P7); resend instead."""

    code = "not_signed_in"


class SchemaNotUpgraded(InviteError):
    """The database has no schema yet, or lacks migrations this release needs: run ``invites db upgrade``."""

    code = "schema_not_upgraded"
