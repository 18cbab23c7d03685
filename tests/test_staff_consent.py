"""P2: email consent given or withdrawn after the client was created, through the API and the CLI."""

from __future__ import annotations

import json

import pytest

import engine
from engine.cli.main import main
from engine.core.models import OutboxEmail
from tests.conftest import token_of
from workflows.actors import enqueue_steps
from workflows.sweep import sweep


def actions(practice, **who) -> list[tuple[str, str]]:
    return [(e["actor"], e["action"]) for e in engine.timeline(practice.id, **who)]


def test_p2_consent_given_later_lets_the_client_be_invited(practice, client_factory, staff_by, clock, worker,
                                                           sink):
    # Given a client created without consent: an invitation is refused
    client = client_factory(email="later@example.test", consent=False)
    with pytest.raises(engine.NoConsent):
        engine.invite(practice.id, client.id, by=staff_by)
    # When staff record the consent the client gave on the phone
    change = engine.set_email_consent(practice.id, client.id, True, by=staff_by)
    # Then nothing is sent by that alone, and the invitation goes once asked for
    assert change.to_dict() == {"client_id": client.id, "email_consent": True, "changed": True,
                                "revoked_invitation_id": None}
    worker.drain()
    assert sink.messages == []
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    assert len(sink.to("later@example.test")) == 1
    assert (staff_by, "consent_given") in actions(practice, client_id=client.id)


def test_p2_withdrawing_consent_revokes_the_pending_invitation_and_stops_reminders(
    practice, client_factory, staff_by, clock, worker, sink
):
    client = client_factory(email="stop@example.test")
    invitation = engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    token = token_of(sink.to("stop@example.test")[0])
    # When the client asks for no more email
    change = engine.set_email_consent(practice.id, client.id, False, by="system:booking")
    assert change.changed and change.revoked_invitation_id == invitation.id
    # Then no reminder goes when it is due, the link is dead, and the status says revoked
    clock.advance(days=20)
    sweep(clock.now(), enqueue=enqueue_steps, lease_s=60)
    worker.drain()
    assert len(sink.to("stop@example.test")) == 1
    with pytest.raises(engine.TokenRevoked):
        engine.verify_token(practice.id, token)
    assert engine.portal_status(practice.id, client.id).status == "revoked"
    assert ("system:booking", "consent_withdrawn") in actions(practice, client_id=client.id)
    # And staff cannot invite again until consent is given back
    with pytest.raises(engine.NoConsent):
        engine.resend(practice.id, client.id, by=staff_by)


def test_p2_withdrawing_consent_keeps_signed_in_access_and_drops_an_unsent_reset(
    practice, client_factory, staff_by, clock, broker, sink
):
    client = client_factory(email="signed@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    engine.record_sign_in(practice.id, client.id)
    engine.request_password_reset(practice.id, client.id, by="system:portal")
    engine.set_email_consent(practice.id, client.id, False, by=staff_by)
    # The reset email owed is dropped; the client still signs in with the password they have
    assert [r.status for r in OutboxEmail.select().where(OutboxEmail.kind == "reset")] == ["superseded"]
    engine.record_sign_in(practice.id, client.id)
    assert engine.portal_status(practice.id, client.id).status == "signed_in"
    with pytest.raises(engine.NoConsent):
        engine.request_password_reset(practice.id, client.id, by="system:portal")


def test_p2_consent_as_it_is_changes_nothing_and_bad_values_are_refused(practice, client_factory, staff_by,
                                                                        practice_factory):
    client = client_factory(consent=True)
    before = actions(practice, client_id=client.id)
    assert engine.set_email_consent(practice.id, client.id, True, by=staff_by).changed is False
    for bad in (1, "on", None):
        with pytest.raises(engine.InvalidInput):
            engine.set_email_consent(practice.id, client.id, bad, by=staff_by)  # type: ignore[arg-type]
    # P17: another practice's staff, or an actor that is not one, are refused; nothing is written
    other = practice_factory("Other Clinic")
    with pytest.raises(engine.UnknownStaff):
        engine.set_email_consent(practice.id, client.id, False, by=f"staff:{other.standard.id}")
    with pytest.raises(engine.UnknownClient):
        engine.set_email_consent(other.id, client.id, False, by=f"staff:{other.standard.id}")
    with pytest.raises(engine.InvalidInput):
        engine.set_email_consent(practice.id, client.id, False, by="nobody")
    assert actions(practice, client_id=client.id) == before


def test_p2_update_client_withdrawing_consent_does_the_same(practice, client_factory, staff_by, clock, worker,
                                                            sink):
    client = client_factory(email="upd@example.test")
    invitation = engine.invite(practice.id, client.id, by=staff_by)
    updated = engine.update_client(practice.id, client.id, by=staff_by, name="New Name", consent=False)
    assert updated.name == "New Name" and updated.email_consent is False
    assert engine.portal_status(practice.id, client.id).invitation_state == "revoked"
    worker.drain()
    assert sink.messages == []
    assert [a for _, a in actions(practice, invitation_id=invitation.id)] == ["invited", "revoke",
                                                                               "consent_withdrawn"]


@pytest.fixture
def run(capsys, monkeypatch, broker):
    """``invites …`` in this process (booted already): returns (exit code, stdout, stderr)."""
    monkeypatch.setattr("engine.core.runtime.boot", lambda *args, **kwargs: None)

    def invoke(*args: object) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return invoke


def test_p2_cli_consent_on_and_off(run, practice, client_factory, staff_by, clock, worker, sink):
    client = client_factory(email="cli@example.test", consent=False)
    code, out, err = run("consent", practice.id, client.id, "on", "--by", staff_by)
    assert (code, err) == (0, "")
    assert out.strip() == f"email consent of client {client.id} given; invite them to send the invitation"
    code, out, _ = run("consent", practice.id, client.id, "on", "--by", staff_by)
    assert code == 0 and "already" in out
    invitation = engine.invite(practice.id, client.id, by=staff_by)
    code, out, _ = run("consent", practice.id, client.id, "off", "--by", staff_by, "--json")
    assert code == 0
    assert json.loads(out) == {"client_id": client.id, "email_consent": False, "changed": True,
                               "revoked_invitation_id": invitation.id}
    code, out, err = run("consent", practice.id, 999_999, "off", "--by", staff_by)
    assert (code, out) == (1, "") and err.startswith("invites: refused (unknown_client)")
    with pytest.raises(SystemExit) as usage:
        run("consent", practice.id, client.id, "maybe", "--by", staff_by)
    assert usage.value.code == 2
