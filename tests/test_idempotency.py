"""Idempotency keys (design: ≤255 chars, 24 h, per practice): an exact repeat gets the first result,
the same key with other parameters ``idempotency_conflict``, for every operation that takes a key:
``create_client`` (with and without ``invite``) and ``invite``; through the API and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from peewee import CharField, ForeignKeyField

import engine
from engine.core import idempotency, schema
from engine.core.db import UTCDateTimeField, db
from engine.core.models import BaseModel, Client, IdempotencyKey, Invitation, Practice, SchemaVersion
from tests.conftest import TEST_REDIS_URL

ROOT = Path(__file__).parents[1]


def counts() -> dict[str, int]:
    return {m.__name__: m.select().count() for m in (Client, Invitation, IdempotencyKey)}


def create(practice: Any, key: str = "intake-form-42", **changes: Any) -> Any:
    params = {"name": "Rosa Diaz", "email": "rosa@example.test", "consent": True, "invite": True, **changes}
    name = params.pop("name")
    return engine.create_client(practice.id, name, by="system:intake", idempotency_key=key, **params)


# --- create_client (P3) ---------------------------------------------------------------------------

@pytest.mark.parametrize("invite", [True, False], ids=["invite", "no-invite"])
def test_p3_create_client_retry_with_same_key_returns_first_client(practice, clock, worker, sink, invite):
    # Given an intake form that created a client with a key
    first = create(practice, invite=invite)
    before = counts()
    # When it retries the very same request, later the same day
    clock.advance(hours=23)
    repeat = create(practice, invite=invite)
    # Then it gets the first client back, and nothing new is written or sent
    assert repeat.id == first.id and repeat.name == "Rosa Diaz"
    assert counts() == before
    worker.drain()
    assert len(sink.to("rosa@example.test")) == (1 if invite else 0)


@pytest.mark.parametrize("invite", [True, False], ids=["invite", "no-invite"])
@pytest.mark.parametrize("change", [{"name": "Other Name"}, {"email": "other@example.test"}, {"consent": False},
                                    {"flip_invite": True}], ids=["name", "email", "consent", "invite"])
def test_p3_create_client_same_key_other_parameters_is_a_conflict(practice, clock, invite, change):
    create(practice, invite=invite, consent=True)
    before = counts()
    other = dict(change)
    if other.pop("flip_invite", False):
        other["invite"] = not invite
    with pytest.raises(engine.IdempotencyConflict) as refused:
        create(practice, **{"invite": invite, **other})
    assert refused.value.code == "idempotency_conflict"
    assert refused.value.details["key"] == "intake-form-42"
    assert counts() == before


def test_p3_create_client_keys_name_one_operation(practice, clock):
    # A key that created a client cannot be replayed as an invitation of that client, nor back.
    client = create(practice, invite=False)
    with pytest.raises(engine.IdempotencyConflict):
        engine.invite(practice.id, client.id, by="system:intake", idempotency_key="intake-form-42")
    engine.invite(practice.id, client.id, by="system:intake", idempotency_key="invite-1")
    with pytest.raises(engine.IdempotencyConflict):
        create(practice, key="invite-1", invite=False)


def test_p3_create_client_keys_are_scoped_per_practice(practice, practice_factory, clock):
    other = practice_factory("Other Clinic")
    mine = create(practice)
    theirs = create(other)
    assert theirs.id != mine.id and theirs.practice_id == other.id
    assert create(other).id == theirs.id


def test_p3_create_client_key_is_forgotten_after_24_hours(practice, clock):
    first = create(practice, invite=False)
    clock.advance(hours=24, seconds=1)
    again = create(practice, invite=False, name="Someone Else")
    assert again.id != first.id and again.name == "Someone Else"


def test_p3_create_client_refused_request_is_not_remembered(practice, clock):
    # A refusal writes nothing, the key included: fixing the request and retrying it works.
    with pytest.raises(engine.NoConsent):
        create(practice, consent=False)
    assert counts()["IdempotencyKey"] == 0
    assert create(practice).id


def test_p3_create_client_key_is_checked_first(practice, clock):
    before = counts()
    for bad in ("", "k" * 256, "line\nbreak"):
        with pytest.raises(engine.InvalidInput) as refused:
            create(practice, key=bad)
        assert refused.value.details["field"] == "idempotency_key"
    assert create(practice, key="k" * 255).id
    assert counts()["Client"] == before["Client"] + 1


def test_p3_create_client_race_the_unique_key_decides(practice, clock, monkeypatch):
    # Given a first request that committed while a second one was between its look-up and its
    # insert (the look-up is made to miss, as it would before the first commit)
    first = create(practice)
    before = counts()
    real_recall = idempotency.recall
    misses = iter([True])

    def late_recall(*args: Any, **kwargs: Any) -> Any:
        return None if next(misses, False) else real_recall(*args, **kwargs)

    monkeypatch.setattr(idempotency, "recall", late_recall)
    # When the second request finishes: its key insert fails, its client is rolled back,
    # and its second pass finds the first request's key
    second = create(practice)
    # Then it returns the first client, and nothing of its own is left
    assert second.id == first.id
    assert counts() == before


@pytest.mark.parametrize("invite", [True, False], ids=["invite", "no-invite"])
def test_p3_create_client_concurrent_identical_requests_make_one_client(practice, clock, invite):
    results: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def request() -> None:
        try:
            start.wait()
            results.append(create(practice, invite=invite).id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(results) == 4 and len(set(results)) == 1
    assert counts()["Client"] == 1 and counts()["IdempotencyKey"] == 1
    assert counts()["Invitation"] == (1 if invite else 0)


# --- invite (P4) ----------------------------------------------------------------------------------

def test_p4_invite_retry_with_same_key_returns_first_invitation_other_message_conflicts(
    practice, client_factory, staff_by, clock
):
    client = client_factory()
    first = engine.invite(practice.id, client.id, by=staff_by, idempotency_key="k1", message="Hello")
    assert engine.invite(practice.id, client.id, by=staff_by, idempotency_key="k1", message="Hello").id == first.id
    with pytest.raises(engine.IdempotencyConflict):
        engine.invite(practice.id, client.id, by=staff_by, idempotency_key="k1", message="Hello again")
    with pytest.raises(engine.IdempotencyConflict):
        engine.invite(practice.id, client.id, by=staff_by, idempotency_key="k1")


# --- migration 4 ----------------------------------------------------------------------------------

def legacy_key_model() -> type[BaseModel]:
    """``idempotency_key`` as version 3 made it: no client. (Named as the real one, so that its
    indexes are too.)"""

    class IdempotencyKey(BaseModel):
        practice = ForeignKeyField(Practice, on_delete="CASCADE")
        key = CharField(max_length=255)
        request_hash = CharField(max_length=64)
        invitation = ForeignKeyField(Invitation, null=True, on_delete="CASCADE")
        created_at = UTCDateTimeField()
        expires_at = UTCDateTimeField()

        class Meta:
            indexes = ((("practice", "key"), True),)

    return IdempotencyKey


def _legacy_hash(client_id: int, kind: str, message: str | None) -> str:
    body = json.dumps({"client": client_id, "kind": kind, "message": message}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def test_migration_4_adds_the_client_and_keeps_legacy_invite_keys(practice, client_factory, staff_by, clock):
    fresh_indexes = sorted((i.name, tuple(i.columns), i.unique) for i in db.get_indexes("idempotency_key"))
    fresh_fks = sorted((f.column, f.dest_table, f.dest_column) for f in db.get_foreign_keys("idempotency_key"))
    client = client_factory()
    other = client_factory()
    invitation = engine.invite(practice.id, client.id, by=staff_by, message="Hi")
    other_invitation = engine.invite(practice.id, other.id, by=staff_by)
    # Given a database as version 3 left it, with two keys hashed the old way: one that matches
    # its invitation, one whose request's message is lost (it returned a live invitation)
    legacy = legacy_key_model()
    db.drop_tables([IdempotencyKey])
    db.create_tables([legacy])
    SchemaVersion.delete().where(SchemaVersion.version == 4).execute()
    for key, inv, digest in (("old-1", invitation, _legacy_hash(client.id, "invite", "Hi")),
                             ("old-2", other_invitation, _legacy_hash(other.id, "invite", "lost"))):
        legacy.insert(practice=practice.id, key=key, request_hash=digest, invitation=inv.id,
                              created_at=clock.now(), expires_at=clock.now().replace(year=2100)).execute()
    # When it upgrades
    assert schema.upgrade() == [4]
    # Then the schema is the one a new database gets, and a retry of the matching key replays
    after = sorted((i.name, tuple(i.columns), i.unique) for i in db.get_indexes("idempotency_key"))
    assert after == fresh_indexes
    assert sorted((f.column, f.dest_table, f.dest_column) for f in db.get_foreign_keys("idempotency_key")) == fresh_fks
    assert "client_id" in {c.name for c in db.get_columns("idempotency_key")}
    assert engine.invite(practice.id, client.id, by=staff_by, idempotency_key="old-1", message="Hi").id == invitation.id
    # and the other is a conflict until it expires, never a second invitation
    with pytest.raises(engine.IdempotencyConflict):
        engine.invite(practice.id, other.id, by=staff_by, idempotency_key="old-2")
    assert schema.upgrade() == []


# --- the CLI, as a real process -------------------------------------------------------------------

@pytest.fixture
def cli(tmp_path: Path, redis_client):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "BROKER_URL": TEST_REDIS_URL,
           "MAIL_URL": f"file://{tmp_path / 'outbox'}"}
    env.pop("INVITES_ACTOR", None)

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    assert run("db", "upgrade").returncode == 0
    yield run
    redis_client.flushdb()


@pytest.mark.parametrize("invite", [True, False], ids=["invite", "no-invite"])
def test_p3_cli_create_client_retry_with_same_key_prints_first_client(cli, invite):
    practice = json.loads(cli("practice", "create", "Key Clinic", "--json").stdout)["practice_id"]
    flags = ["--consent", "--invite"] if invite else ["--consent"]
    request = ["client", "create", practice, "Rosa", "--email", "rosa@example.test", *flags,
               "--key", "intake-form-42", "--by", "system:intake"]
    first, repeat = cli(*request), cli(*request)
    assert (first.returncode, repeat.returncode) == (0, 0), first.stderr + repeat.stderr
    assert repeat.stdout == first.stdout
    assert first.stdout.startswith("client 1 created")
    again = cli(*request, "--json")
    assert json.loads(again.stdout)["client_id"] == 1
    # Same key, another email: refused, one line, exit 1
    other = cli(*[("other@example.test" if a == "rosa@example.test" else a) for a in request])
    assert other.returncode == 1
    assert other.stderr.startswith("invites: refused (idempotency_conflict)")
    assert len(other.stderr.strip().splitlines()) == 1
    # And only one client was made
    status = cli("status", practice, 2, "--json")
    assert status.returncode == 1 and "(unknown_client)" in status.stderr
