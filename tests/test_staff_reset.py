"""P7: password reset emails with short-lived, single-use links; a newer request wins."""

from __future__ import annotations

from datetime import timedelta

import pytest

import engine
from engine.core.models import OutboxEmail
from tests.conftest import RunningWorker, token_of


def signed_in(practice, client_factory, staff_by, worker, sink, address: str):
    client = client_factory(email=address)
    engine.invite(practice.id, client.id, by=staff_by)
    worker.drain()
    engine.redeem_token(practice.id, token_of(sink.to(address)[0]), "the first password")
    return client


def actions(practice, client) -> list[tuple[str, str]]:
    return [(e["actor"], e["action"]) for e in engine.timeline(practice.id, client_id=client.id)]


def test_p7_reset_email_has_a_short_lived_single_use_link(practice, client_factory, staff_by, clock, worker, sink):
    client = signed_in(practice, client_factory, staff_by, worker, sink, "forgot@example.test")
    request = engine.request_password_reset(practice.id, client.id, by="system:portal")
    worker.drain()
    assert (request.to_email, request.request_number, request.link_ttl_s) == ("forgot@example.test", 1, 3600)
    mail = sink.to("forgot@example.test")[-1]
    assert mail["Subject"] == f"Reset your password for {practice.name}"
    assert "in 60 minutes" in mail.get_body(("plain",)).get_content()
    token = token_of(mail)
    info = engine.verify_token(practice.id, token)
    assert (info.client_id, info.purpose, info.expires_at) == (client.id, "reset", clock.now() + timedelta(hours=1))
    # Single use
    assert engine.redeem_token(practice.id, token, "my new password") == client.id
    with pytest.raises(engine.TokenUsed):
        engine.redeem_token(practice.id, token, "yet another password")
    # Short-lived
    engine.request_password_reset(practice.id, client.id, by=staff_by)
    worker.drain()
    late = token_of(sink.to("forgot@example.test")[-1])
    clock.advance(hours=1, seconds=1)
    with pytest.raises(engine.TokenExpired):
        engine.redeem_token(practice.id, late, "too late a password")
    timeline = actions(practice, client)
    assert ("system:portal", "password_reset_requested") in timeline
    assert (staff_by, "password_reset_requested") in timeline
    assert timeline.count(("worker", "password_reset_sent")) == 2


def test_p7_asking_twice_invalidates_the_first_link(practice, client_factory, staff_by, clock, worker, sink):
    client = signed_in(practice, client_factory, staff_by, worker, sink, "twice@example.test")
    engine.request_password_reset(practice.id, client.id, by="system:portal")
    worker.drain()
    first = token_of(sink.to("twice@example.test")[-1])
    clock.advance(minutes=5)
    engine.request_password_reset(practice.id, client.id, by="system:portal")
    # The first link dies at once, before the second email is even sent.
    with pytest.raises(engine.TokenRevoked):
        engine.verify_token(practice.id, first)
    worker.drain()
    second = token_of(sink.to("twice@example.test")[-1])
    assert engine.verify_token(practice.id, second).purpose == "reset"
    with pytest.raises(engine.TokenRevoked):
        engine.redeem_token(practice.id, first, "a password for the old link")


def test_p7_two_requests_before_the_worker_runs_send_one_email(practice, client_factory, staff_by, clock, broker,
                                                               sink):
    # Given a signed-in client, and no worker running yet
    client = client_factory(email="burst@example.test")
    engine.invite(practice.id, client.id, by=staff_by)
    engine.record_sign_in(practice.id, client.id)
    # When the client asks twice before any email went
    engine.request_password_reset(practice.id, client.id, by="system:portal")
    engine.request_password_reset(practice.id, client.id, by="system:portal")
    running = RunningWorker(broker)
    running.worker.start()
    try:
        running.drain()
    finally:
        running.worker.stop()
    # Then one reset email goes, for the second request
    [reset] = sink.to("burst@example.test")
    assert reset["Subject"].startswith("Reset")
    assert [r.status for r in OutboxEmail.select().where(OutboxEmail.kind == "reset").order_by(OutboxEmail.id)] == [
        "superseded", "sent"]
    assert engine.verify_token(practice.id, token_of(reset)).purpose == "reset"


def test_p7_reset_is_refused_without_access_in_use(practice, client_factory, staff_by, clock, worker, sink):
    never = client_factory()
    with pytest.raises(engine.NotSignedIn) as refused:
        engine.request_password_reset(practice.id, never.id, by="system:portal")
    assert refused.value.code == "not_signed_in"
    waiting = client_factory(email="waiting@example.test")
    engine.invite(practice.id, waiting.id, by=staff_by)
    with pytest.raises(engine.NotSignedIn):
        engine.request_password_reset(practice.id, waiting.id, by="system:portal")
    off = signed_in(practice, client_factory, staff_by, worker, sink, "off@example.test")
    engine.disable(practice.id, off.id, by=staff_by)
    with pytest.raises(engine.AccessDisabled):
        engine.request_password_reset(practice.id, off.id, by="system:portal")
    user = signed_in(practice, client_factory, staff_by, worker, sink, "user@example.test")
    engine.set_portal_enabled(practice.id, False, by=f"staff:{practice.admin.id}")
    with pytest.raises(engine.PortalOff):
        engine.request_password_reset(practice.id, user.id, by="system:portal")
    worker.drain()
    assert OutboxEmail.select().where(OutboxEmail.kind == "reset").count() == 0


def test_p7_an_undeliverable_reset_shows_under_needs_attention(practice, client_factory, staff_by, clock, worker,
                                                               sink):
    client = signed_in(practice, client_factory, staff_by, worker, sink, "gone@example.test")
    sink.reply = "451 4.3.0 try again later"
    engine.request_password_reset(practice.id, client.id, by="system:portal")
    worker.drain()  # three attempts (the tests' MAX_DELIVERY_ATTEMPTS), then failed
    row = OutboxEmail.get(OutboxEmail.kind == "reset")
    assert (row.status, row.attempts) == ("failed", 3)
    [item] = engine.needs_attention(practice.id, by=staff_by).items
    assert (item.reason, item.client_id, item.email) == ("reset_failed", client.id, "gone@example.test")
    assert "451" in item.last_error
    assert ("worker", "password_reset_failed") in actions(practice, client)
