"""The tables. The database is the truth; everything else is a nudge."""

from __future__ import annotations

from peewee import (
    SQL,
    AutoField,
    BooleanField,
    CharField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from engine.core.db import UTCDateTimeField, db

#: Default cadence: reminders 3 and 7 days after sending, expiry after 14 days.
DEFAULT_REMINDER_OFFSETS_S = "259200,604800"
DEFAULT_LIFETIME_S = 14 * 86_400


class BaseModel(Model):
    """Each model declares, after its foreign keys, the ``<name>_id`` attributes Peewee adds
    beside them (annotations only, for type checkers)."""

    class Meta:
        database = db
        legacy_table_names = False


class Practice(BaseModel):
    """One tenant, with its portal settings."""

    id = AutoField()
    name = CharField(max_length=200)
    logo_url = CharField(max_length=2000, null=True)
    portal_url = CharField(max_length=2000)
    time_zone = CharField(max_length=64, default="UTC")
    portal_enabled = BooleanField(default=True)
    #: When the portal was switched off; follow-ups shift by the pause when it comes back.
    portal_off_since = UTCDateTimeField(null=True)
    online_payments = BooleanField(default=False)
    #: Seconds after sending at which reminders go, comma-separated, ascending.
    reminder_offsets_s = CharField(max_length=200, default=DEFAULT_REMINDER_OFFSETS_S)
    lifetime_s = IntegerField(default=DEFAULT_LIFETIME_S)
    #: Send window for reminders, minutes after local midnight; both null means any time.
    window_start_min = IntegerField(null=True, default=9 * 60)
    window_end_min = IntegerField(null=True, default=18 * 60)
    created_at = UTCDateTimeField()
    updated_at = UTCDateTimeField()

    @property
    def reminder_offsets(self) -> list[int]:
        return [int(x) for x in self.reminder_offsets_s.split(",") if x]


class Staff(BaseModel):
    """A practice's team member (not a portal login)."""

    id = AutoField()
    practice = ForeignKeyField(Practice, backref="staff", on_delete="CASCADE")
    practice_id: int
    name = CharField(max_length=200)
    email = CharField(max_length=320)
    role = CharField(max_length=16)  # standard | admin
    active = BooleanField(default=True)
    created_at = UTCDateTimeField()


class Client(BaseModel):
    """A customer profile of one practice (a pet parent, a patient)."""

    id = AutoField()
    # Indexed with the id below: a mass invitation walks a practice's clients in id order.
    practice = ForeignKeyField(Practice, backref="clients", on_delete="CASCADE", index=False)
    practice_id: int
    name = CharField(max_length=200)
    primary_email = CharField(max_length=320, null=True)
    #: Email/reminder notifications switched on: without it nothing is sent (P2).
    email_consent = BooleanField(default=False)
    created_at = UTCDateTimeField()
    updated_at = UTCDateTimeField()

    class Meta:
        indexes = ((("practice", "id"), False),)


class PortalAccess(BaseModel):
    """A client's portal access: the address it uses, permissions, sign-in facts."""

    client = ForeignKeyField(Client, primary_key=True, backref="access", on_delete="CASCADE")
    practice = ForeignKeyField(Practice, on_delete="CASCADE")
    client_id: int
    practice_id: int
    portal_email = CharField(max_length=320, null=True)
    can_request_appointments = BooleanField(default=True)
    can_message = BooleanField(default=True)
    can_view_billing = BooleanField(default=False)
    can_pay = BooleanField(default=False)
    disabled_at = UTCDateTimeField(null=True)
    first_signed_in_at = UTCDateTimeField(null=True)
    last_signed_in_at = UTCDateTimeField(null=True)
    password_hash = CharField(max_length=300, null=True)
    password_set_at = UTCDateTimeField(null=True)
    updated_at = UTCDateTimeField()


class Invitation(BaseModel):
    """One invitation workflow: send → await sign-in → remind → expire."""

    id = AutoField()
    practice = ForeignKeyField(Practice, on_delete="CASCADE")
    client = ForeignKeyField(Client, backref="invitations", on_delete="CASCADE")
    practice_id: int
    client_id: int
    email = CharField(max_length=320)
    #: Only ``workflows.invitation.transition`` writes these two.
    state = CharField(max_length=16)
    version = IntegerField(default=1)
    #: The durable timer: when the next step is due (null when none is).
    next_action_at = UTCDateTimeField(null=True)
    #: A claimed step's lease; the sweep enqueues the step again once it runs out.
    lease_until = UTCDateTimeField(null=True)
    reminders_sent = IntegerField(default=0)
    kind = CharField(max_length=16, default="invite")  # invite | share
    custom_message = TextField(null=True)
    created_by = CharField(max_length=100)
    created_at = UTCDateTimeField()
    sent_at = UTCDateTimeField(null=True)
    expires_at = UTCDateTimeField(null=True)
    ended_at = UTCDateTimeField(null=True)
    last_error = TextField(null=True)

    class Meta:
        indexes = ((("state", "next_action_at"), False),)


# At most one live invitation per client, enforced by the database itself. Named: the default
# name ("invitation_client_id") is the foreign key's index, and IF NOT EXISTS skipped this one.
Invitation.add_index(
    Invitation.index(Invitation.client, unique=True, where=SQL("state IN ('queued', 'sent', 'reminded')"),
                     name="invitation_one_live_per_client")
)


class Token(BaseModel):
    """A sign-in / set-password link. Only the SHA-256 of the token is stored."""

    id = AutoField()
    practice = ForeignKeyField(Practice, on_delete="CASCADE")
    client = ForeignKeyField(Client, on_delete="CASCADE", index=False)  # leads (client, purpose) below
    invitation = ForeignKeyField(Invitation, null=True, on_delete="CASCADE")
    practice_id: int
    client_id: int
    invitation_id: int | None
    purpose = CharField(max_length=16)  # invite | reset
    token_hash = CharField(max_length=64, unique=True)
    created_at = UTCDateTimeField()
    expires_at = UTCDateTimeField()
    used_at = UTCDateTimeField(null=True)
    revoked_at = UTCDateTimeField(null=True)
    revoked_reason = CharField(max_length=32, null=True)

    class Meta:
        indexes = ((("client", "purpose"), False),)


class OutboxEmail(BaseModel):
    """One email a step owes, written before the SMTP conversation, marked sent after it."""

    id = AutoField()
    practice = ForeignKeyField(Practice, on_delete="CASCADE")
    client = ForeignKeyField(Client, on_delete="CASCADE")
    invitation = ForeignKeyField(Invitation, null=True, on_delete="CASCADE")
    practice_id: int
    client_id: int
    invitation_id: int | None
    #: Unique per (invitation, step): a redelivered step finds its row and sends nothing new.
    dedupe_key = CharField(max_length=100, unique=True)
    kind = CharField(max_length=16)  # invitation | reminder | reset
    to_email = CharField(max_length=320)
    message_id = CharField(max_length=200)
    status = CharField(max_length=12, default="pending")  # pending|sending|sent|failed|superseded
    attempts = IntegerField(default=0)
    sending_since = UTCDateTimeField(null=True)
    sent_at = UTCDateTimeField(null=True)
    last_error = TextField(null=True)
    created_at = UTCDateTimeField()

    class Meta:
        indexes = ((("status", "sent_at"), False),)


class AuditEvent(BaseModel):
    """Who did what, when: the invitation's timeline and the practice's record (P17)."""

    id = AutoField()
    # practice and invitation lead the two indexes below, which serve every lookup (and
    # cascade) by either; an index of their own would only slow down each insert.
    practice = ForeignKeyField(Practice, on_delete="CASCADE", index=False)
    client = ForeignKeyField(Client, null=True, on_delete="CASCADE")
    invitation = ForeignKeyField(Invitation, null=True, on_delete="CASCADE", index=False)
    practice_id: int
    client_id: int | None
    invitation_id: int | None
    at = UTCDateTimeField()
    actor = CharField(max_length=100)  # staff:<id> | system:<name> | worker | scheduler | client
    action = CharField(max_length=40)
    from_state = CharField(max_length=16, null=True)
    to_state = CharField(max_length=16, null=True)
    detail = TextField(null=True)

    class Meta:
        indexes = ((("invitation", "id"), False), (("practice", "at"), False))


class IdempotencyKey(BaseModel):
    """A caller's idempotency key: the first result is returned on a repeat for 24 h.

    ``engine.core.idempotency`` is the one mechanism that reads and writes these rows.
    """

    id = AutoField()
    practice = ForeignKeyField(Practice, on_delete="CASCADE")
    key = CharField(max_length=255)
    #: SHA-256 of the operation's name and parameters: the same key with another is a conflict.
    request_hash = CharField(max_length=64)
    #: The first result: the client made (``create_client``) and/or the invitation.
    client = ForeignKeyField(Client, null=True, on_delete="CASCADE")
    invitation = ForeignKeyField(Invitation, null=True, on_delete="CASCADE")
    practice_id: int
    client_id: int | None
    invitation_id: int | None
    created_at = UTCDateTimeField()
    expires_at = UTCDateTimeField()

    class Meta:
        indexes = ((("practice", "key"), True),)


class ApiKey(BaseModel):
    """A calling system's key to the HTTP API (B14). Only the SHA-256 of the key is stored.

    The key reads ``pik_<lookup_id>_<secret>``: the lookup id finds the row, the hash of the
    whole key is compared in constant time. A null practice is a platform key (every practice).
    """

    id = AutoField()
    practice = ForeignKeyField(Practice, null=True, on_delete="CASCADE")
    practice_id: int | None
    #: Audited as ``system:<name>`` when the system acts on its own.
    name = CharField(max_length=40)
    #: Comma-separated: invite, staff, portal, ops.
    scopes = CharField(max_length=100)
    lookup_id = CharField(max_length=16, unique=True)
    key_hash = CharField(max_length=64)
    created_at = UTCDateTimeField()
    revoked_at = UTCDateTimeField(null=True)
    last_used_at = UTCDateTimeField(null=True)


class StoredResponse(BaseModel):
    """The first answer to an HTTP request made with an ``Idempotency-Key``, replayed on a repeat.

    ``status`` is null while the first request runs: the unique (owner, key) index lets one of
    two concurrent requests run, and the other waits for its answer.
    """

    id = AutoField()
    #: ``practice:<id>`` for a practice's keys, ``key:<id>`` for a platform key.
    owner = CharField(max_length=40)
    key = CharField(max_length=255)
    request_hash = CharField(max_length=64)
    status = IntegerField(null=True)
    body = TextField(null=True)
    #: JSON object of the replayed headers (content type, location).
    headers = TextField(null=True)
    created_at = UTCDateTimeField()
    expires_at = UTCDateTimeField()

    class Meta:
        indexes = ((("owner", "key"), True),)


class SchemaVersion(BaseModel):
    """Which numbered migrations have run."""

    version = IntegerField(primary_key=True)
    applied_at = UTCDateTimeField()


MODELS: tuple[type[BaseModel], ...] = (
    Practice,
    Staff,
    Client,
    PortalAccess,
    Invitation,
    Token,
    OutboxEmail,
    AuditEvent,
    IdempotencyKey,
    ApiKey,
    StoredResponse,
    SchemaVersion,
)
