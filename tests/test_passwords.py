"""Portal passwords (P7): Argon2id for new ones, old scrypt ones still sign in and get upgraded.

Hashing and verifying run outside any transaction; an upgrade is a compare-and-set on the hash
it verified; neither a password nor its hash reaches a log line.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from argon2 import PasswordHasher

import engine
from engine.core import passwords, tokens
from engine.core.db import db
from engine.core.models import PortalAccess
from engine.operations import lookup

PASSWORD = "correct horse battery staple"
# Made by the scrypt code this project used before Argon2id (N=2^14, r=8, p=1) for PASSWORD.
OLD_SCRYPT_HASH = "scrypt$16384$8$1$e2JMF8gucxm2WB70qhuFVA==$GJ+nGH8Z7uH372voNU5C8zObvvJz8xDZCxdQVgmAm/c="


def stored_hash(client: Any) -> str | None:
    return PortalAccess.get_by_id(client.id).password_hash


def give_hash(client: Any, stored: str, clock: Any) -> None:
    """Write a password hash straight into the database, as an older release left it."""
    lookup.access(client, clock.now())
    PortalAccess.update(password_hash=stored, password_set_at=clock.now(), updated_at=clock.now()).where(
        PortalAccess.client == client.id
    ).execute()


def set_by_link(practice: Any, client: Any, password: str, clock: Any) -> None:
    """Set a password the way a client does: through a set-password link, redeemed."""
    raw = tokens.issue(practice_id=practice.id, client_id=client.id, invitation_id=None, purpose="reset",
                       expires_at=clock.now() + timedelta(hours=1), now=clock.now())
    engine.redeem_token(practice.id, raw, password)


def test_p7_new_passwords_are_argon2id(practice, client_factory, clock):
    client = client_factory()
    set_by_link(practice, client, PASSWORD, clock)
    stored = stored_hash(client)
    assert stored is not None and stored.startswith("$argon2id$")
    assert not passwords.needs_rehash(stored)
    assert engine.check_password(practice.id, client.id, PASSWORD)
    assert stored_hash(client) == stored  # current parameters: nothing to redo


def test_p7_old_scrypt_password_signs_in_and_comes_out_argon2id(practice, client_factory, clock):
    # Given a password an older release stored as scrypt
    client = client_factory()
    give_hash(client, OLD_SCRYPT_HASH, clock)
    # When the client signs in with it
    assert engine.check_password(practice.id, client.id, PASSWORD)
    engine.record_sign_in(practice.id, client.id)
    # Then the stored hash is Argon2id, and the same password still works
    upgraded = stored_hash(client)
    assert upgraded is not None and upgraded.startswith("$argon2id$")
    assert not passwords.needs_rehash(upgraded)
    assert engine.check_password(practice.id, client.id, PASSWORD)
    assert not engine.check_password(practice.id, client.id, "wrong horse battery staple")
    assert stored_hash(client) == upgraded
    assert PortalAccess.get_by_id(client.id).last_signed_in_at is not None


def test_p7_wrong_password_does_not_rehash(practice, client_factory, clock):
    client = client_factory()
    give_hash(client, OLD_SCRYPT_HASH, clock)
    assert not engine.check_password(practice.id, client.id, "wrong horse battery staple")
    assert not engine.check_password(practice.id, client.id, "")
    assert not engine.check_password(practice.id, client.id, "x" * 5000)
    assert stored_hash(client) == OLD_SCRYPT_HASH


def test_p7_argon2_hash_with_outdated_parameters_is_rehashed(practice, client_factory, clock):
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    client = client_factory()
    give_hash(client, weak, clock)
    assert engine.check_password(practice.id, client.id, PASSWORD)
    upgraded = stored_hash(client)
    assert upgraded != weak and upgraded is not None and upgraded.startswith("$argon2id$")
    assert not passwords.needs_rehash(upgraded)


def test_p7_rehash_keeps_a_password_changed_meanwhile(practice, client_factory, clock, monkeypatch):
    # Given an old hash, and a new password set by a reset link while the sign-in is hashing
    client = client_factory()
    give_hash(client, OLD_SCRYPT_HASH, clock)
    newer = passwords.hash_password("a newer long password")
    real_hash = passwords.hash_password

    def hash_while_the_password_changes(password: str) -> str:
        fresh = real_hash(password)
        PortalAccess.update(password_hash=newer).where(PortalAccess.client == client.id).execute()
        return fresh

    monkeypatch.setattr(passwords, "hash_password", hash_while_the_password_changes)
    # When the sign-in with the old password finishes
    assert engine.check_password(practice.id, client.id, PASSWORD)
    # Then the newer password stays: the re-hash did not overwrite it
    assert stored_hash(client) == newer


def test_p7_hashing_runs_outside_any_transaction(practice, client_factory, clock, monkeypatch):
    depths: list[tuple[str, int]] = []
    real_hash, real_verify = passwords.hash_password, passwords.verify_password

    def hash_password(password: str) -> str:
        depths.append(("hash", db.transaction_depth()))
        return real_hash(password)

    def verify_password(password: str, stored: str) -> bool:
        depths.append(("verify", db.transaction_depth()))
        return real_verify(password, stored)

    monkeypatch.setattr(passwords, "hash_password", hash_password)
    monkeypatch.setattr(passwords, "verify_password", verify_password)
    client, old = client_factory(), client_factory()
    set_by_link(practice, client, PASSWORD, clock)
    engine.check_password(practice.id, client.id, PASSWORD)
    give_hash(old, OLD_SCRYPT_HASH, clock)
    engine.check_password(practice.id, old.id, PASSWORD)  # verify, then re-hash
    assert [kind for kind, _ in depths] == ["hash", "verify", "verify", "hash"]
    assert all(depth == 0 for _, depth in depths), depths


def test_p7_check_password_refusals(practice, practice_factory, client_factory, staff_by, clock):
    client, without = client_factory(), client_factory()
    give_hash(client, OLD_SCRYPT_HASH, clock)
    assert not engine.check_password(practice.id, without.id, PASSWORD)  # no password set yet
    other = practice_factory("Other Practice")
    with pytest.raises(engine.UnknownClient):
        engine.check_password(other.id, client.id, PASSWORD)
    with pytest.raises(engine.Forbidden):
        engine.check_password(practice.id, client.id, PASSWORD, by=staff_by)
    engine.set_portal_enabled(practice.id, False, by=f"staff:{practice.admin.id}")
    with pytest.raises(engine.PortalOff):
        engine.check_password(practice.id, client.id, PASSWORD)
    engine.set_portal_enabled(practice.id, True, by=f"staff:{practice.admin.id}")
    engine.disable(practice.id, client.id, by=staff_by)
    with pytest.raises(engine.AccessDisabled):
        engine.check_password(practice.id, client.id, PASSWORD)
    assert stored_hash(client) == OLD_SCRYPT_HASH  # refused before anything was verified


def test_p7_no_password_or_hash_reaches_a_log_line(practice, client_factory, clock, all_logs):
    # Given every path that writes or compares a hash: a password set, an old one upgraded, a miss
    client, old = client_factory(), client_factory()
    set_by_link(practice, client, "a first long password", clock)
    give_hash(old, OLD_SCRYPT_HASH, clock)
    assert engine.check_password(practice.id, old.id, PASSWORD)
    assert not engine.check_password(practice.id, client.id, "a wrong long password")
    # Then the SQL log was there, and holds neither passwords nor hashes
    assert any(r.name == "peewee" for r in all_logs.records), "the SQL log was not captured"
    logged = all_logs.text()
    secrets = [PASSWORD, "a first long password", "a wrong long password", OLD_SCRYPT_HASH,
               stored_hash(client), stored_hash(old), "$argon2", "scrypt$"]
    for secret in secrets:
        assert secret and secret not in logged, secret
    # And the upgrade left a line that says so, by action
    assert [getattr(r, "old_scheme", None) for r in all_logs.records
            if getattr(r, "action", None) == "password_rehashed"] == ["scrypt"]


def test_p7_cli_sign_in_with_an_old_scrypt_password_comes_out_argon2id(practice, client_factory, clock, monkeypatch,
                                                                      capsys):
    import io

    from engine.cli.main import OK, REFUSED, main

    # Given a password an older release stored as scrypt
    client = client_factory()
    give_hash(client, OLD_SCRYPT_HASH, clock)
    # When a portal signs the client in through the CLI with a wrong password, it is refused
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong horse battery staple\n"))
    assert main(["sign-in", str(practice.id), str(client.id), "--password-stdin"]) == REFUSED
    assert "wrong_password" in capsys.readouterr().err
    assert stored_hash(client) == OLD_SCRYPT_HASH
    assert PortalAccess.get_by_id(client.id).last_signed_in_at is None
    # and with the right one, the sign-in is recorded and the hash is Argon2id
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["sign-in", str(practice.id), str(client.id), "--password-stdin"]) == OK
    assert (stored_hash(client) or "").startswith("$argon2id$")
    assert PortalAccess.get_by_id(client.id).last_signed_in_at is not None
