"""The staff views: needs attention, pending, scheduled (P8), a page at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query

from engine.api.auth import Staff, with_db
from engine.api.schemas import AttentionPage, PendingPage, ScheduledPage
from engine.operations import views

router = APIRouter(prefix="/v1/views", tags=["views"])
Limit = Annotated[int, Query(ge=1, le=views.MAX_LIMIT, description="rows per page")]
Offset = Annotated[int, Query(ge=0, lt=2**63, description="rows to skip: the `next_offset` of the page before")]


def _page(show: Callable[..., views.ViewPage], who: Staff, limit: int, offset: int) -> dict[str, Any]:
    page = show(who.practice, by=who.actor, limit=limit, offset=offset)
    following = offset + len(page.items)
    return {**page.to_dict(), "items": page.items, "next_offset": following if following < page.total else None}


@router.get("/needs-attention", response_model=AttentionPage)
@with_db
def needs_attention(who: Staff, limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
    """Failed deliveries and invitations that expired unused."""
    return _page(views.needs_attention, who, limit, offset)


@router.get("/pending", response_model=PendingPage)
@with_db
def pending(who: Staff, limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
    """Invited and not signed in yet: days waiting, reminders sent."""
    return _page(views.pending, who, limit, offset)


@router.get("/scheduled", response_model=ScheduledPage)
@with_db
def scheduled(who: Staff, limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
    """The next follow-ups and when they go, in the practice's time zone."""
    return _page(views.scheduled, who, limit, offset)
