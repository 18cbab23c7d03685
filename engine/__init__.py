"""Portal Invites: the engine's public API, the only door into its state."""

from __future__ import annotations

# Set-up
from engine.core.clock import Clock, ManualClock, SystemClock, now, use_clock

# Errors
from engine.core.errors import (
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
    NotSignedIn,
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
from engine.core.runtime import boot
from engine.core.schema import upgrade
from engine.core.settings import Settings, get_settings

# Staff operations on portal access (docs/staff.md); the rest of the group is marked below
from engine.operations.access import (
    EmailChange,
    Permissions,
    change_portal_email,
    change_primary_email,
    disable,
    effective_permissions,
    permissions,
    resend,
    set_permissions,
)

# Invitations, sign-in, links
from engine.operations.invitations import TokenInfo, invite, record_sign_in, redeem_token, verify_token
from engine.operations.mass import MassInviteReport, mass_invite  # staff operations
from engine.operations.password_check import check_password
from engine.operations.password_resets import ResetRequest, request_password_reset  # staff operations
from engine.operations.portal import PortalLink, PortalSwitch, portal_link, set_portal_enabled  # staff operations

# Practices, staff, clients
from engine.operations.practices import (
    ConsentChange,
    create_client,
    create_practice,
    create_staff,
    set_email_consent,
    update_client,
    update_practice,
)
from engine.operations.sharing import ShareResult, share_documents  # staff operations

# Views
from engine.operations.status import PortalStatus, portal_status, timeline
from engine.operations.views import ViewPage, needs_attention, pending, scheduled

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
    "NotSignedIn",
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
    "ConsentChange",
    "create_client",
    "create_practice",
    "create_staff",
    "set_email_consent",
    "update_client",
    "update_practice",
    # Invitations, sign-in, links
    "TokenInfo",
    "check_password",
    "invite",
    "record_sign_in",
    "redeem_token",
    "verify_token",
    # Staff operations on portal access
    "EmailChange",
    "MassInviteReport",
    "Permissions",
    "PortalLink",
    "PortalSwitch",
    "ResetRequest",
    "ShareResult",
    "change_portal_email",
    "change_primary_email",
    "disable",
    "effective_permissions",
    "mass_invite",
    "permissions",
    "portal_link",
    "request_password_reset",
    "resend",
    "set_permissions",
    "set_portal_enabled",
    "share_documents",
    # Views
    "PortalStatus",
    "ViewPage",
    "needs_attention",
    "pending",
    "portal_status",
    "scheduled",
    "timeline",
]
