"""Request and response bodies (Pydantic). The operations' own result dataclasses (``PortalStatus``,
``EmailChange`` …) serve as response models as they are, so the API cannot drift from the engine."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.core.models import Client, Invitation, Practice, Staff
from engine.operations.views import AttentionItem, PendingItem, ScheduledItem


class Body(BaseModel):
    """A request body: unknown fields are refused (a typo must not pass as a default)."""

    model_config = ConfigDict(extra="forbid")


# --- practices and staff ---------------------------------------------------------------------

class PracticeSettings(Body):
    """Practice settings; each left out stays as it is (or takes its default, on creation)."""

    logo_url: str | None = Field(None, max_length=2000)
    portal_url: str | None = Field(None, max_length=2000, description="default: PORTAL_BASE_URL/p/<id>")
    time_zone: str | None = Field(None, max_length=64, description="IANA name, e.g. Europe/London")
    online_payments: bool | None = None
    reminder_offsets_s: list[int] | None = Field(None, max_length=10, description="ascending, e.g. [259200, 604800]")
    lifetime_s: int | None = Field(None, description="invitation lifetime, 10 s to a year")
    send_window: tuple[int, int] | None = Field(
        None, description="minutes after local midnight, e.g. [540, 1080]; leave out to keep it")
    no_send_window: bool = Field(False, description="true: reminders go at any hour")

    def changes(self) -> dict[str, Any]:
        out = self.model_dump(exclude_unset=True, exclude={"no_send_window"})
        out = {k: v for k, v in out.items() if v is not None or k == "logo_url"}
        if "send_window" in out:
            out["send_window"] = list(out["send_window"])
        if self.no_send_window:
            out["send_window"] = None
        return out


class PracticeCreate(PracticeSettings):
    name: str = Field(max_length=200)


class PracticeUpdate(PracticeSettings):
    name: str | None = Field(None, max_length=200)


class PracticeOut(BaseModel):
    id: int
    name: str
    logo_url: str | None
    portal_url: str
    time_zone: str
    portal_enabled: bool
    online_payments: bool
    reminder_offsets_s: list[int]
    lifetime_s: int
    send_window: list[int] | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Practice) -> PracticeOut:
        start, end = row.window_start_min, row.window_end_min
        window = None if start is None or end is None else [int(start), int(end)]
        return cls(id=row.id, name=row.name, logo_url=row.logo_url, portal_url=row.portal_url,
                   time_zone=row.time_zone, portal_enabled=row.portal_enabled, online_payments=row.online_payments,
                   reminder_offsets_s=row.reminder_offsets, lifetime_s=row.lifetime_s, send_window=window,
                   created_at=row.created_at, updated_at=row.updated_at)


class StaffCreate(Body):
    name: str = Field(max_length=200)
    email: str = Field(max_length=320)
    role: Literal["standard", "admin"] = "standard"


class StaffOut(BaseModel):
    id: int
    practice_id: int
    name: str
    email: str
    role: str
    actor: str = Field(description="what X-Acting-Staff names them by, as audited: staff:<id>")

    @classmethod
    def of(cls, row: Staff) -> StaffOut:
        return cls(id=row.id, practice_id=row.practice_id, name=row.name, email=row.email, role=row.role,
                   actor=f"staff:{row.id}")


class PortalSwitchIn(Body):
    enabled: bool


# --- clients ------------------------------------------------------------------------------------

class ClientCreate(Body):
    name: str = Field(max_length=200)
    email: str | None = Field(None, max_length=320)
    consent: bool = Field(False, description="email notifications switched on (P2)")
    invite: bool = Field(False, description="send the portal invitation now (P3)")


class ClientUpdate(Body):
    name: str | None = Field(None, max_length=200)
    consent: bool | None = None


class ClientOut(BaseModel):
    id: int
    practice_id: int
    name: str
    primary_email: str | None
    email_consent: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Client) -> ClientOut:
        return cls(id=row.id, practice_id=row.practice_id, name=row.name, primary_email=row.primary_email,
                   email_consent=row.email_consent, created_at=row.created_at, updated_at=row.updated_at)


class ConsentIn(Body):
    consent: bool


class EmailIn(Body):
    email: str = Field(max_length=320)


class PrimaryEmailIn(EmailIn):
    portal_action: Literal["keep", "disable_and_resend"] = Field(
        "keep", description="disable_and_resend: revoke the old access and invite the new address (P10)")


class PermissionsIn(Body):
    can_request_appointments: bool | None = None
    can_message: bool | None = None
    can_view_billing: bool | None = None
    can_pay: bool | None = None


class PermissionsOut(BaseModel):
    client_id: int
    permissions: dict[str, bool] = Field(description="as stored")
    effective: dict[str, bool] = Field(description="in effect now (portal off or access disabled: none)")


class ShareIn(Body):
    documents: int = Field(1, ge=1, description="how many documents were shared")
    message: str | None = Field(None, max_length=2000)


# --- invitations ----------------------------------------------------------------------------------

class InvitationCreate(Body):
    client_id: int = Field(gt=0)
    message: str | None = Field(None, max_length=2000, description="a personal message (plain text)")


class MessageIn(Body):
    message: str | None = Field(None, max_length=2000, description="a personal message (plain text)")


class InvitationOut(BaseModel):
    id: int
    practice_id: int
    client_id: int
    email: str
    state: str
    kind: str
    created_by: str
    created_at: datetime
    sent_at: datetime | None
    expires_at: datetime | None
    reminders_sent: int

    @classmethod
    def of(cls, row: Invitation) -> InvitationOut:
        return cls(id=row.id, practice_id=row.practice_id, client_id=row.client_id, email=row.email,
                   state=row.state, kind=row.kind, created_by=row.created_by, created_at=row.created_at,
                   sent_at=row.sent_at, expires_at=row.expires_at, reminders_sent=row.reminders_sent)


class TimelineEvent(BaseModel):
    at: datetime
    actor: str
    action: str
    from_state: str | None
    to_state: str | None
    invitation_id: int | None
    detail: dict[str, Any] | None


# --- views ------------------------------------------------------------------------------------------

class _Page(BaseModel):
    view: str
    practice_id: int
    total: int = Field(description="rows in the whole view")
    limit: int
    offset: int
    next_offset: int | None = Field(description="the offset of the next page; null on the last")


class AttentionPage(_Page):
    items: list[AttentionItem]


class PendingPage(_Page):
    items: list[PendingItem]


class ScheduledPage(_Page):
    items: list[ScheduledItem]


# --- portal ---------------------------------------------------------------------------------------

class TokenIn(Body):
    token: str = Field(min_length=1, max_length=200)


class RedeemIn(TokenIn):
    password: str = Field(min_length=1, max_length=1000)


class Redeemed(BaseModel):
    client_id: int
    signed_in: bool = True


class SignInIn(Body):
    client_id: int = Field(gt=0)


# --- health and errors ----------------------------------------------------------------------------

class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class Problem(BaseModel):
    """RFC 9457 problem details, with the engine's stable ``code`` and the error's own fields."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    code: str = Field(description="stable: the Python API's exception code (docs/api.md lists them)")
    detail: str
