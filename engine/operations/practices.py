"""Practices, their staff and their clients."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.core import audit, clock, idempotency, validate
from engine.core.db import write
from engine.core.errors import InvalidInput
from engine.core.models import Client, OutboxEmail, Practice, Staff
from engine.core.settings import get_settings
from engine.mail import validate_address
from engine.operations import access, lookup, roles


def _zone(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput("time_zone must be an IANA name such as Europe/London", field="time_zone")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(f"unknown time zone {value!r}", field="time_zone") from exc
    return value


def _offsets(value: object) -> str:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value
    ):
        raise InvalidInput("reminder offsets must be positive whole seconds", field="reminder_offsets_s")
    if list(value) != sorted(set(value)) or len(value) > 10:
        raise InvalidInput("reminder offsets must be ascending, distinct, at most 10", field="reminder_offsets_s")
    return ",".join(str(x) for x in value)


def _window(value: object) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(x, int) and 0 <= x < 1440 for x in value)
        or value[0] == value[1]
    ):
        raise InvalidInput("send window must be two different minutes of the day (0-1439)", field="send_window")
    return value[0], value[1]


def _url(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.startswith(("https://", "http://")) or len(value) > 2000:
        raise InvalidInput(f"{field} must be an http(s) URL", field=field)
    if any(ch.isspace() or ch in "<>\"'" for ch in value):
        raise InvalidInput(f"{field} must not contain spaces or quotes", field=field)
    return value


def _settings_changes(values: dict[str, Any]) -> dict[str, Any]:
    """Validate practice settings given by name; returns the columns to write."""
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key == "name":
            changes["name"] = validate.name(value)
        elif key == "logo_url":
            changes["logo_url"] = None if value in (None, "") else _url(value, "logo_url")
        elif key == "portal_url":
            changes["portal_url"] = _url(value, "portal_url")
        elif key == "time_zone":
            changes["time_zone"] = _zone(value)
        elif key == "online_payments":
            changes["online_payments"] = bool(value)
        elif key == "reminder_offsets_s":
            changes["reminder_offsets_s"] = _offsets(value)
        elif key == "lifetime_s":
            # The floor is low so a demo can compress days into seconds (`invites demo`: 30 s).
            if not isinstance(value, int) or isinstance(value, bool) or not 10 <= value <= 365 * 86_400:
                raise InvalidInput("lifetime_s must be between 10 s and a year", field="lifetime_s")
            changes["lifetime_s"] = value
        elif key == "send_window":
            changes["window_start_min"], changes["window_end_min"] = _window(value)
        else:
            raise InvalidInput(f"unknown practice setting {key!r}", field=key)
    return changes


def create_practice(name: str, *, now: datetime | None = None, **settings: Any) -> Practice:
    """A new practice. Settings: logo_url, portal_url, time_zone, online_payments,
    reminder_offsets_s (list of seconds), lifetime_s, send_window ((start_min, end_min) or None).
    """
    now = now or clock.now()
    changes = _settings_changes({"name": name, **settings})
    with write():
        # The default portal URL names the practice's id, known only once the row exists.
        changes.setdefault("portal_url", "http://pending.invalid")
        practice = Practice.create(created_at=now, updated_at=now, **changes)
        if practice.portal_url == "http://pending.invalid":
            practice.portal_url = f"{get_settings().portal_base_url}/p/{practice.id}"
            practice.save()
        audit.record(practice_id=practice.id, actor="system:platform", action="practice_created", now=now)
    return practice


def update_practice(practice_id: int, *, by: str, now: datetime | None = None, **settings: Any) -> Practice:
    """Change practice settings (admin only). Portal on/off has its own call."""
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "practice_settings")
    changes = _settings_changes(settings)
    with write():
        practice = lookup.practice(practice_id)
        Practice.update(updated_at=now, **changes).where(Practice.id == practice.id).execute()
        audit.record(practice_id=practice.id, actor=actor, action="practice_updated", now=now,
                     detail={k: str(v) for k, v in changes.items()})
    return lookup.practice(practice_id)


def create_staff(practice_id: int, name: str, email: str, role: str, *, by: str | None = None,
                 now: datetime | None = None) -> Staff:
    """Add a staff user. The first one needs no ``by``; later ones are added by an admin."""
    now = now or clock.now()
    if role not in roles.ROLES:
        raise InvalidInput(f"role must be one of {', '.join(roles.ROLES)}", field="role")
    with write():
        practice = lookup.practice(practice_id)
        if by is None and Staff.select().where(Staff.practice == practice.id).exists():
            raise InvalidInput("only an admin may add staff once the practice has some", field="by")
        actor = roles.authorize(practice.id, by, "manage_staff") if by else "system:platform"
        staff = Staff.create(practice=practice.id, name=validate.name(name), email=validate_address(email),
                             role=role, created_at=now)
        audit.record(practice_id=practice.id, actor=actor, action="staff_created", now=now,
                     detail={"staff_id": staff.id, "role": role})
    return staff


def create_client(
    practice_id: int,
    name: str,
    *,
    by: str,
    email: str | None = None,
    consent: bool = False,
    invite: bool = False,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> Client:
    """Create a client profile; with ``invite`` the welcome invitation goes at once (P3).

    An invitation the client cannot get (no email, no consent, portal off) refuses the whole
    call, so an intake form never creates a profile that silently got nothing. With an
    ``idempotency_key`` (kept 24 h, with or without ``invite``) an exact repeat returns the
    first client and creates nothing; the key with another name, email, consent or ``invite``
    raises ``IdempotencyConflict``.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "create_client")
    clean_name = validate.name(name)
    address = validate_address(email) if email not in (None, "") else None
    key = None if idempotency_key is None else idempotency.check_key(idempotency_key)
    digest = "" if key is None else idempotency.fingerprint(
        "create_client", name=clean_name, email=address, consent=bool(consent), invite=bool(invite))
    from engine.operations import invitations

    def attempt() -> tuple[Client, int | None]:
        with write():
            practice = lookup.practice(practice_id)
            seen = None if key is None else idempotency.recall(practice.id, key, digest, now=now)
            if seen is not None:
                return lookup.client(practice.id, seen.client_id), None
            client = Client.create(practice=practice.id, name=clean_name, primary_email=address,
                                   email_consent=bool(consent), created_at=now, updated_at=now)
            audit.record(practice_id=practice.id, client_id=client.id, actor=actor, action="client_created",
                         now=now)
            created = None
            if invite:
                created = invitations.open_invitation(practice, client, actor=actor, now=now).id
            if key is not None:
                idempotency.remember(practice.id, key, digest, now=now, client_id=client.id, invitation_id=created)
            return client, created

    # Two concurrent first requests with one key: the unique (practice, key) index lets one
    # commit; the other rolls back its client and, on its second pass, returns the winner's.
    client, created = idempotency.run_once(attempt)
    if created is not None:
        invitations.nudge([created])
    return client


def update_client(practice_id: int, client_id: int, *, by: str, now: datetime | None = None,
                  name: str | None = None, consent: bool | None = None) -> Client:
    """Change a client's name or email consent (consent as ``set_email_consent`` does it; the
    primary email has its own call, P10)."""
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "update_client")
    clean_name = None if name is None else validate.name(name)
    if consent is not None:
        _check_consent(consent)
    with write():
        client = lookup.client(practice_id, client_id)
        if clean_name is not None:
            Client.update(name=clean_name, updated_at=now).where(Client.id == client.id).execute()
            audit.record(practice_id=practice_id, client_id=client.id, actor=actor, action="client_updated",
                         now=now, detail={"name": clean_name})
        if consent is not None:
            _apply_consent(client, consent, actor=actor, now=now)
    return lookup.client(practice_id, client_id)


@dataclass(frozen=True)
class ConsentChange:
    """What giving or withdrawing a client's email consent did (P2)."""

    client_id: int
    email_consent: bool
    #: False when the client's consent was already as asked (nothing was written).
    changed: bool
    #: Withdrawing ends the live invitation: no more reminders, its links die.
    revoked_invitation_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def set_email_consent(practice_id: int, client_id: int, consent: bool, *, by: str,
                      now: datetime | None = None) -> ConsentChange:
    """Give (``True``) or withdraw (``False``) a client's email consent after creation (P2).

    Giving it sends nothing by itself: invite the client afterwards. Withdrawing it means no
    more email to the client, so the live invitation (if any) is revoked (its follow-ups stop,
    its links die, its unsent email is dropped) and an unsent password-reset email is dropped.
    Access of a client who has signed in stays as it is: consent is about email, and the
    portal link still works. Same right as ``update_client``.
    """
    now = now or clock.now()
    actor = roles.authorize(practice_id, by, "update_client")
    _check_consent(consent)
    with write():
        client = lookup.client(lookup.practice(practice_id).id, client_id)
        return _apply_consent(client, consent, actor=actor, now=now)


def _check_consent(consent: object) -> None:
    if not isinstance(consent, bool):
        raise InvalidInput("consent must be true or false", field="consent")


def _apply_consent(client: Client, consent: bool, *, actor: str, now: datetime) -> ConsentChange:
    """Inside a write transaction: store the consent and, on withdrawal, stop every email owed."""
    if bool(client.email_consent) == consent:
        return ConsentChange(client.id, consent, changed=False)
    Client.update(email_consent=consent, updated_at=now).where(Client.id == client.id).execute()
    live = None
    if not consent:
        # A step already queued re-reads the invitation, finds it revoked and sends nothing.
        live = access.live_for_update(client.id)
        if live is not None:
            access.revoke_invitation(live, actor=actor, now=now, reason="consent_withdrawn")
        OutboxEmail.update(status="superseded").where(
            (OutboxEmail.client == client.id) & (OutboxEmail.kind == "reset") & (OutboxEmail.status == "pending")
        ).execute()
    audit.record(practice_id=client.practice_id, client_id=client.id, invitation_id=live.id if live else None,
                 actor=actor, action="consent_given" if consent else "consent_withdrawn", now=now)
    return ConsentChange(client.id, consent, changed=True, revoked_invitation_id=live.id if live else None)
