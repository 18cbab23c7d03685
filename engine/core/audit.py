"""Audit rows for actions that are not workflow transitions (those write their own)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from engine.core.models import AuditEvent


def record(
    *,
    practice_id: int,
    actor: str,
    action: str,
    now: datetime,
    client_id: int | None = None,
    invitation_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    AuditEvent.create(
        practice=practice_id,
        client=client_id,
        invitation=invitation_id,
        at=now,
        actor=actor,
        action=action,
        detail=json.dumps(detail, sort_keys=True, default=str) if detail else None,
    )
