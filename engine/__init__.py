"""Portal Invites: the engine's public API, the only door into its state."""

from __future__ import annotations

# Set-up
from engine.clock import Clock, ManualClock, SystemClock, now, use_clock

# Errors
from engine.errors import (
    AccessDisabled,
    AlreadySignedIn,
    Conflict,
    DeliveryError,
    Forbidden,
    IdempotencyConflict,
    IllegalTransition,
    InvalidInput,
    InviteError,
    MalformedEmail,
    NoConsent,
    NoEmail,
    NotFound,
    NotInvited,
    PermanentDeliveryError,
    PermissionRule,
    PortalOff,
    ServiceUnavailable,
    TokenError,
    TokenExpired,
    TokenRevoked,
    TokenUnknown,
    TokenUsed,
    TransientDeliveryError,
    UnknownClient,
    UnknownInvitation,
    UnknownPractice,
    UnknownStaff,
)

# Invitations, sign-in, links
from engine.invitations import TokenInfo, invite, record_sign_in, redeem_token, verify_token

# Practices, staff, clients
from engine.practices import create_client, create_practice, create_staff, update_client, update_practice
from engine.runtime import boot
from engine.schema import upgrade
from engine.settings import Settings, get_settings

# Views
from engine.status import PortalStatus, portal_status, timeline

__all__ = [
    # Errors
    "AccessDisabled",
    "AlreadySignedIn",
    "Conflict",
    "DeliveryError",
    "Forbidden",
    "IdempotencyConflict",
    "IllegalTransition",
    "InvalidInput",
    "InviteError",
    "MalformedEmail",
    "NoConsent",
    "NoEmail",
    "NotFound",
    "NotInvited",
    "PermanentDeliveryError",
    "PermissionRule",
    "PortalOff",
    "ServiceUnavailable",
    "TokenError",
    "TokenExpired",
    "TokenRevoked",
    "TokenUnknown",
    "TokenUsed",
    "TransientDeliveryError",
    "UnknownClient",
    "UnknownInvitation",
    "UnknownPractice",
    "UnknownStaff",
    # Set-up
    "Clock",
    "ManualClock",
    "Settings",
    "SystemClock",
    "boot",
    "get_settings",
    "now",
    "upgrade",
    "use_clock",
    # Practices, staff, clients
    "create_client",
    "create_practice",
    "create_staff",
    "update_client",
    "update_practice",
    # Invitations, sign-in, links
    "TokenInfo",
    "invite",
    "record_sign_in",
    "redeem_token",
    "verify_token",
    # Views
    "PortalStatus",
    "portal_status",
    "timeline",
]
