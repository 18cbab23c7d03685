"""Issue 7: steps in batches (``steps.advance_many``) keep every guarantee of a single step.

One batch plans every email in one transaction, talks SMTP, and records every result in one
more; each invitation keeps its own outcome, its own compare-and-set and its own outbox row.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import engine
from engine.core.db import db, insert_rows, select_by_ids, write
from engine.core.errors import TransientDeliveryError
from engine.core.models import AuditEvent, Client, Invitation, OutboxEmail, PortalAccess, Practice, Token
from engine.core.settings import get_settings
from engine.mail import SmtpTransport, Transport
from tests.conftest import links
from tests.faults import RecordingSink, smtp_transport
from workflows import steps


@pytest.fixture
def picky() -> Iterator[tuple[RecordingSink, SmtpTransport]]:
    """An SMTP sink that refuses some recipients: ``nobody@`` for good, ``later@`` for now."""
    handler = RecordingSink()
    with smtp_transport(handler) as transport:
        yield handler, transport


def _invite(practice: Any, client_factory: Any, staff_by: str, *emails: str) -> list[int]:
    return [engine.invite(practice.id, client_factory(email=e).id, by=staff_by).id for e in emails]


def _first_reminder_after(practice: Any) -> timedelta:
    return timedelta(seconds=Practice.get_by_id(practice.id).reminder_offsets[0])


def _state(invitation_id: int) -> str:
    return str(Invitation.get_by_id(invitation_id).state)


def test_w2_one_batch_sends_each_email_once_and_moves_every_invitation(
    practice, client_factory, staff_by, clock, broker, sink
):
    from workflows.actors import transport

    ids = _invite(practice, client_factory, staff_by, *(f"b{i}@example.test" for i in range(5)))
    # The same ids twice in one message are one step each.
    outcomes = steps.advance_many(ids + ids, now=clock.now(), transport=transport(), settings=get_settings())

    assert outcomes.done == dict.fromkeys(ids, "invitation_sent") and not outcomes.errors
    assert sorted(m["To"].addresses[0].addr_spec for m in sink.messages) == [f"b{i}@example.test" for i in range(5)]
    for invitation_id in ids:
        row = Invitation.get_by_id(invitation_id)
        assert (row.state, row.version, row.lease_until) == ("sent", 2, None)
        assert row.next_action_at == row.sent_at + _first_reminder_after(practice)
        actions = [e["action"] for e in engine.timeline(practice.id, invitation_id=invitation_id)]
        assert actions == ["invited", "deliver"]
    assert OutboxEmail.select().where(OutboxEmail.status == "sent").count() == 5
    assert Token.select().count() == 5
    # Every email carries its own client's link.
    tokens = {links(m)["set_password"] for m in sink.messages}
    assert len(tokens) == 5

    again = steps.advance_many(ids, now=clock.now(), transport=transport(), settings=get_settings())
    assert again.done == dict.fromkeys(ids, "not_due") and len(sink.messages) == 5



def test_w2_a_refused_or_deferred_email_does_not_hold_back_the_rest_of_its_batch(
    practice, client_factory, staff_by, clock, broker, picky
):
    handler, transport = picky
    ok, gone, later = _invite(practice, client_factory, staff_by, "ok@example.test", "nobody@example.test",
                              "later@example.test")

    outcomes = steps.advance_many([ok, gone, later], now=clock.now(), transport=transport, settings=get_settings())

    assert outcomes.done[ok] == "invitation_sent" and _state(ok) == "sent"
    # 5xx: failed for good, with the server's reason, its outbox row final.
    assert outcomes.done[gone] == "failed" and _state(gone) == "failed"
    assert "no such user" in Invitation.get_by_id(gone).last_error
    # 4xx: the error goes back to the actor (it retries); the row is free for that retry.
    assert isinstance(outcomes.errors[later], TransientDeliveryError)
    row = OutboxEmail.get(OutboxEmail.invitation == later)
    assert (row.status, row.attempts) == ("pending", 1) and "451" in row.last_error
    held = Invitation.get_by_id(later)
    assert held.state == "queued" and held.lease_until > clock.now()
    assert handler.recipients == ["ok@example.test"]

    # The retry (to a mailbox that now accepts) finds the same outbox row and sends it.
    Client.update(primary_email="later-ok@example.test").where(Client.id == held.client_id).execute()
    Invitation.update(email="later-ok@example.test").where(Invitation.id == later).execute()
    retried = steps.advance_many([later], now=clock.now(), transport=transport, settings=get_settings())
    assert retried.done[later] == "invitation_sent" and _state(later) == "sent"
    assert OutboxEmail.get(OutboxEmail.invitation == later).attempts == 2


class SignInWhileSending:
    """A transport that lets the client sign in while their email is on its way."""

    def __init__(self, inner: Transport, practice_id: int, client_id: int) -> None:
        self.inner, self.practice_id, self.client_id = inner, practice_id, client_id

    def send(self, *, from_addr: str, to_addr: str, message: bytes, message_id: str) -> None:
        self.inner.send(from_addr=from_addr, to_addr=to_addr, message=message, message_id=message_id)
        if to_addr == "quick@example.test":
            # Another thread, as the portal would be: its own connection and transaction.
            thread = threading.Thread(target=self._sign_in)
            thread.start()
            thread.join()

    def _sign_in(self) -> None:
        with db.connection_context():
            engine.record_sign_in(self.practice_id, self.client_id)

    def close(self) -> None:
        self.inner.close()


def test_w1_a_sign_in_during_the_batch_wins_over_its_email(practice, client_factory, staff_by, clock, broker, sink):
    from workflows.actors import transport

    quick = client_factory(email="quick@example.test")
    first = engine.invite(practice.id, quick.id, by=staff_by).id
    [second] = _invite(practice, client_factory, staff_by, "slow@example.test")
    sneaky = SignInWhileSending(transport(), practice.id, quick.id)

    outcomes = steps.advance_many([first, second], now=clock.now(), transport=sneaky, settings=get_settings())

    assert outcomes.done == {first: "sent_but_superseded", second: "invitation_sent"}
    assert _state(first) == "signed_in" and _state(second) == "sent"
    actions = [e["action"] for e in engine.timeline(practice.id, invitation_id=first)]
    assert actions == ["invited", "sign_in"]  # the email went, but the workflow had ended


def test_w2_a_batch_out_of_time_gives_its_emails_back_untried(
    practice, client_factory, staff_by, clock, broker, sink
):
    from workflows.actors import transport

    ids = _invite(practice, client_factory, staff_by, "t1@example.test", "t2@example.test")
    hurried = dataclasses.replace(get_settings(), step_time_limit_ms=0)

    outcomes = steps.advance_many(ids, now=clock.now(), transport=transport(), settings=hurried)

    assert outcomes.deferred == ids and not outcomes.errors and sink.messages == []
    rows = list(OutboxEmail.select().order_by(OutboxEmail.id))
    assert [(r.status, r.attempts) for r in rows] == [("pending", 0), ("pending", 0)]  # not an attempt
    assert {_state(i) for i in ids} == {"queued"}
    later = steps.advance_many(ids, now=clock.now(), transport=transport(), settings=get_settings())
    assert later.done == dict.fromkeys(ids, "invitation_sent") and len(sink.messages) == 2


def test_w2_the_batch_actor_hands_a_failed_step_to_the_retrying_single_path(
    practice, client_factory, staff_by, clock, worker, sink
):
    from workflows.actors import advance_invitations

    ids = _invite(practice, client_factory, staff_by, "w1@example.test", "w2@example.test")
    worker.drain()  # the invitations' own nudges
    sink.clear()
    clock.advance(days=3, minutes=1)
    sink.reply = "451 4.3.0 busy"
    advance_invitations.send(ids)
    worker.drain()
    # Every attempt refused: the single path retried each one, then failed it.
    assert {_state(i) for i in ids} == {"failed"}
    assert all("451" in Invitation.get_by_id(i).last_error for i in ids)


def test_insert_rows_fills_defaults_returns_columns_and_can_skip_conflicts(practice, client_factory, clock, broker):
    clients = [client_factory() for _ in range(3)]
    now = clock.now()
    with write():
        made = insert_rows(
            [PortalAccess.client, PortalAccess.practice, PortalAccess.updated_at],
            [(c.id, practice.id, now) for c in clients[:2]],
            returning=[PortalAccess.client],
        )
        again = insert_rows(
            [PortalAccess.client, PortalAccess.practice, PortalAccess.updated_at],
            [(c.id, practice.id, now) for c in clients],
            returning=[PortalAccess.client],
            ignore_conflicts=True,
        )
    assert sorted(made) == [(clients[0].id,), (clients[1].id,)]
    assert again == [(clients[2].id,)]  # the two already there were skipped
    row = PortalAccess.get_by_id(clients[2].id)
    assert (row.can_request_appointments, row.can_message, row.can_pay, row.updated_at) == (True, True, False, now)
    assert AuditEvent.select().where(AuditEvent.action == "invited").count() == 0


def test_select_by_ids_reads_what_peewee_reads(practice, client_factory, staff_by, clock, broker):
    ids = _invite(practice, client_factory, staff_by, "c1@example.test", "c2@example.test", "c3@example.test")
    engine.record_sign_in(practice.id, Invitation.get_by_id(ids[1]).client_id)  # dates and states differ
    wanted = [ids[2], ids[0], ids[1], ids[2], 10**9]  # any order, a repeat, one that is not there

    with write():
        rows = select_by_ids(Invitation, wanted, for_update=True, extra={"shouted": "UPPER(email)"})
        some = select_by_ids(Invitation, wanted, fields=[Invitation.id, Invitation.sent_at, Invitation.state])
        practices = select_by_ids(Practice, [practice.id])
    expected = list(Invitation.select().where(Invitation.id.in_(ids)).order_by(Invitation.id))

    assert [row.__data__ for row in rows] == [row.__data__ for row in expected]  # in id order, once each
    assert [type(v) for v in rows[0].__data__.values()] == [type(v) for v in expected[0].__data__.values()]
    assert [row.shouted for row in rows] == [row.email.upper() for row in expected]
    assert [(r.id, r.sent_at, r.state, r.email) for r in some] == [(r.id, r.sent_at, r.state, None) for r in expected]
    assert practices[0].__data__ == Practice.get_by_id(practice.id).__data__
    assert practices[0].portal_enabled is True
    assert not rows[0].is_dirty()
    assert select_by_ids(Invitation, []) == []


def test_transition_many_keeps_each_rows_compare_and_set(practice, client_factory, staff_by, clock, broker):
    from workflows.invitation import Event, Move, transition_many

    first, second = _invite(practice, client_factory, staff_by, "c1@example.test", "c2@example.test")
    rows = [Invitation.get_by_id(first), Invitation.get_by_id(second)]
    engine.record_sign_in(practice.id, rows[1].client_id)  # the second moves on meanwhile
    moves = [Move(row, {"sent_at": clock.now(), "last_error": None}, {"to": row.email}) for row in rows]

    with pytest.raises(engine.Conflict):
        transition_many(moves, Event.DELIVER, actor="worker", now=clock.now())
    # Nothing written: not the first row either, and no audit row.
    assert (_state(first), Invitation.get_by_id(first).version, _state(second)) == ("queued", 1, "signed_in")
    assert AuditEvent.select().where(AuditEvent.action == "deliver").count() == 0

    transition_many(moves[:1], Event.DELIVER, actor="worker", now=clock.now())
    row = Invitation.get_by_id(first)
    assert (row.state, row.version, row.sent_at, row.last_error) == ("sent", 2, clock.now(), None)
    [audit] = AuditEvent.select().where(AuditEvent.action == "deliver")
    assert (audit.invitation_id, audit.from_state, audit.to_state, audit.actor) == (first, "queued", "sent", "worker")
