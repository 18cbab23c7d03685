"""Portal Invites: the engine's public API, the only door into its state.

The names below are the operations of ``engine.operations`` and the few pieces of the core a
caller needs (errors, settings, the clock). Each loads on first use (PEP 562): importing a
module of the core, as the workflow steps do, does not load the operations above it, so no
program meets a half-made module whichever it imports first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.core.clock import (
        Clock,
        ManualClock,
        SystemClock,
        now,
        use_clock,
    )
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
        OutOfScope,
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
        Unauthenticated,
        UnknownApiKey,
        UnknownClient,
        UnknownInvitation,
        UnknownPractice,
        UnknownStaff,
        WrongPassword,
    )
    from engine.core.runtime import (
        boot,
    )
    from engine.core.schema import (
        upgrade,
    )
    from engine.core.settings import (
        Settings,
        get_settings,
    )
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
    from engine.operations.api_keys import (
        ApiKeyInfo,
        NewApiKey,
        create_key,
        list_keys,
        revoke_key,
        rotate_key,
    )
    from engine.operations.invitations import (
        TokenInfo,
        invite,
        record_sign_in,
        redeem_token,
        verify_token,
    )
    from engine.operations.mass import (
        MassInviteReport,
        mass_invite,
    )
    from engine.operations.password_check import (
        check_password,
    )
    from engine.operations.password_resets import (
        ResetRequest,
        request_password_reset,
    )
    from engine.operations.portal import (
        PortalLink,
        PortalSwitch,
        portal_link,
        set_portal_enabled,
    )
    from engine.operations.practices import (
        ConsentChange,
        create_client,
        create_practice,
        create_staff,
        set_email_consent,
        update_client,
        update_practice,
    )
    from engine.operations.sharing import (
        ShareResult,
        share_documents,
    )
    from engine.operations.status import (
        PortalStatus,
        portal_status,
        timeline,
    )
    from engine.operations.views import (
        ViewPage,
        needs_attention,
        pending,
        scheduled,
    )

#: Where each public name lives: its module is imported when the name is first used.
_HOMES: dict[str, tuple[str, ...]] = {
    "engine.core.errors": (
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
        "OutOfScope",
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
        "Unauthenticated",
        "UnknownApiKey",
        "UnknownClient",
        "UnknownInvitation",
        "UnknownPractice",
        "UnknownStaff",
        "WrongPassword",
    ),
    "engine.core.clock": (
        "Clock",
        "ManualClock",
        "SystemClock",
        "now",
        "use_clock",
    ),
    "engine.core.settings": (
        "Settings",
        "get_settings",
    ),
    "engine.core.runtime": (
        "boot",
    ),
    "engine.core.schema": (
        "upgrade",
    ),
    "engine.operations.practices": (
        "ConsentChange",
        "create_client",
        "create_practice",
        "create_staff",
        "set_email_consent",
        "update_client",
        "update_practice",
    ),
    "engine.operations.invitations": (
        "TokenInfo",
        "invite",
        "record_sign_in",
        "redeem_token",
        "verify_token",
    ),
    "engine.operations.password_check": (
        "check_password",
    ),
    "engine.operations.access": (
        "EmailChange",
        "Permissions",
        "change_portal_email",
        "change_primary_email",
        "disable",
        "effective_permissions",
        "permissions",
        "resend",
        "set_permissions",
    ),
    "engine.operations.api_keys": (
        "ApiKeyInfo",
        "NewApiKey",
        "create_key",
        "list_keys",
        "revoke_key",
        "rotate_key",
    ),
    "engine.operations.mass": (
        "MassInviteReport",
        "mass_invite",
    ),
    "engine.operations.portal": (
        "PortalLink",
        "PortalSwitch",
        "portal_link",
        "set_portal_enabled",
    ),
    "engine.operations.password_resets": (
        "ResetRequest",
        "request_password_reset",
    ),
    "engine.operations.sharing": (
        "ShareResult",
        "share_documents",
    ),
    "engine.operations.status": (
        "PortalStatus",
        "portal_status",
        "timeline",
    ),
    "engine.operations.views": (
        "ViewPage",
        "needs_attention",
        "pending",
        "scheduled",
    ),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next use is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
