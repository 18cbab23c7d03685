"""Practices, their settings, staff, the portal switch, link and widget (P15, P16, P17)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from engine.api.auth import Staff, with_db
from engine.api.schemas import (
    PortalSwitchIn,
    PracticeCreate,
    PracticeOut,
    PracticeUpdate,
    StaffCreate,
    StaffOut,
)
from engine.core.errors import Forbidden
from engine.operations import lookup, portal, practices
from engine.operations.portal import PortalLink, PortalSwitch

router = APIRouter(prefix="/v1", tags=["practices"])


@router.post("/practices", status_code=201, response_model=PracticeOut)
@with_db
def create_practice(body: PracticeCreate, who: Staff) -> PracticeOut:
    """A new practice (platform key only). Its first staff user is added with `POST /v1/staff`."""
    if not who.is_platform:
        raise Forbidden("only a platform key creates practices")
    settings = {k: v for k, v in body.changes().items() if k != "name"}
    return PracticeOut.of(practices.create_practice(body.name, **settings))


@router.get("/practice", response_model=PracticeOut)
@with_db
def get_practice(who: Staff) -> PracticeOut:
    """The key's practice (a platform key: the one named by X-Practice-Id)."""
    return PracticeOut.of(lookup.practice(who.practice))


@router.patch("/practice", response_model=PracticeOut)
@with_db
def update_practice(body: PracticeUpdate, who: Staff) -> PracticeOut:
    """Change practice settings (an admin, named by X-Acting-Staff)."""
    return PracticeOut.of(practices.update_practice(who.practice, by=who.actor, **body.changes()))


@router.put("/practice/portal", response_model=PortalSwitch)
@with_db
def switch_portal(body: PortalSwitchIn, who: Staff) -> PortalSwitch:
    """Switch the portal on or off for the whole practice (P15). Follow-ups pause while it is off."""
    return portal.set_portal_enabled(who.practice, body.enabled, by=who.actor)


@router.get("/practice/portal-link", response_model=PortalLink)
@with_db
def portal_link(who: Staff, label: Annotated[str | None, Query(max_length=100)] = None) -> PortalLink:
    """The portal URL to share with signed-in clients, and the website widget snippet (P12, P16)."""
    return portal.portal_link(who.practice, by=who.actor, label=label)


@router.post("/staff", status_code=201, response_model=StaffOut)
@with_db
def create_staff(body: StaffCreate, who: Staff) -> StaffOut:
    """Add a staff user: by an admin (X-Acting-Staff); a platform key adds a practice's first one."""
    by = None if who.is_platform and who.actor.startswith("system:") else who.actor
    return StaffOut.of(practices.create_staff(who.practice, body.name, body.email, body.role, by=by))
