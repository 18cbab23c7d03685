"""Who may do what (P17). Every call names its actor: ``staff:<id>`` or ``system:<name>``."""

from __future__ import annotations

import re

from engine.core.errors import Forbidden, InvalidInput, UnknownStaff
from engine.core.models import Staff
from engine.core.validate import positive_id

#: Day-to-day work a ``standard`` staff user may do.
STANDARD_ACTIONS = frozenset(
    {
        "create_client",
        "update_client",
        "invite",
        "share_documents",
        "resend",
        "disable",
        "change_portal_email",
        "change_primary_email",
        "set_permissions",
        "send_password_reset",
        "view",
    }
)
#: An ``admin`` also changes practice settings, runs mass invitations and reads metrics.
ADMIN_ACTIONS = STANDARD_ACTIONS | {"practice_settings", "mass_invite", "metrics", "manage_staff"}
ROLE_ACTIONS = {"standard": STANDARD_ACTIONS, "admin": ADMIN_ACTIONS}
ROLES = tuple(ROLE_ACTIONS)

#: Other systems (intake, booking, document sharing, the portal itself) act under a name.
SYSTEM_ACTIONS = frozenset(
    {
        "create_client",
        "update_client",
        "invite",
        "share_documents",
        "sign_in",
        "redeem_token",
        "send_password_reset",
        "view",
    }
)

_ACTOR = re.compile(r"^(staff):([1-9][0-9]{0,17})$|^(system):([a-z][a-z0-9_-]{0,39})$")


def authorize(practice_id: int, by: str, action: str) -> str:
    """The audit label of ``by`` if it may do ``action`` in this practice, else an error."""
    match = _ACTOR.match(by) if isinstance(by, str) else None
    if match is None:
        raise InvalidInput(
            "actor must be 'staff:<id>' or 'system:<name>'", field="by", value=str(by)[:50]
        )
    # Checked here, before the staff query: a huge or non-integer id must be refused, not crash the driver.
    practice_id = positive_id(practice_id, field="practice_id")
    if match.group(3) == "system":
        if action not in SYSTEM_ACTIONS:
            raise Forbidden(f"system actors may not {action.replace('_', ' ')}", action=action)
        return by
    staff = Staff.get_or_none(
        (Staff.id == int(match.group(2))) & (Staff.practice == practice_id) & (Staff.active == True)  # noqa: E712
    )
    if staff is None:
        raise UnknownStaff("no active staff user with that id in this practice", staff=by)
    if action not in ROLE_ACTIONS[staff.role]:
        raise Forbidden(
            f"a {staff.role} user may not {action.replace('_', ' ')}", action=action, role=staff.role
        )
    return by
