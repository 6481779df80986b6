"""apply(state, event) is a pure fold: the state follows the events and nothing else."""

from __future__ import annotations

import dataclasses

import pytest

from vsmtp.queue import events as qe
from vsmtp.queue.state import QUEUE_TAGS, QueueState, apply


def accepted(queue_id: str = "Q", recipients: tuple[str, ...] = ("a@localhost", "b@localhost")) -> qe.MessageAccepted:
    return qe.MessageAccepted(at=10.0, queue_id=queue_id, session_id="S", reverse_path="s@x.org", recipients=recipients, blob=b"Q", size=5)


def succeeded(recipient: str, queue_id: str = "Q") -> qe.DeliverySucceeded:
    return qe.DeliverySucceeded(at=11.0, queue_id=queue_id, recipient=recipient, transport="maildir", detail="f")


def test_accepted_message_is_pending_for_every_recipient() -> None:
    state = apply(QueueState(), accepted())
    message = state.messages["Q"]
    assert [r.address for r in message.pending()] == ["a@localhost", "b@localhost"]
    assert state.accepted == 1 and not message.done


def test_message_leaves_the_state_when_every_recipient_is_final() -> None:
    state = apply(QueueState(), accepted())
    state = apply(state, succeeded("a@localhost"))
    assert [r.address for r in state.messages["Q"].pending()] == ["b@localhost"]
    state = apply(state, qe.DeliveryFailed(at=12.0, queue_id="Q", recipient="b@localhost", transport="maildir", reason="no"))
    assert state.messages["Q"].bounce_due  # final, with a failure: it waits for its bounce
    assert (state.delivered, state.failed, state.completed) == (1, 1, 0)
    state = apply(state, qe.MessageBounced(at=13.0, queue_id="Q", bounce_id="B", recipients=("b@localhost",)))
    assert "Q" not in state.messages
    assert (state.delivered, state.failed, state.completed) == (1, 1, 1)


def test_a_failed_message_from_the_null_sender_is_held_not_bounced() -> None:
    state = apply(
        QueueState(),
        qe.MessageAccepted(at=1.0, queue_id="B", session_id="", reverse_path="", recipients=("x@far.test",), blob=b"B", size=1),
    )
    state = apply(state, qe.DeliveryFailed(at=2.0, queue_id="B", recipient="x@far.test", transport="smtp", reason="550 no"))
    assert state.messages["B"].held and not state.messages["B"].bounce_due


def test_deferral_keeps_the_recipient_pending_with_a_retry_time() -> None:
    state = apply(QueueState(), accepted(recipients=("a@localhost",)))
    state = apply(
        state, qe.DeliveryDeferred(at=11.0, queue_id="Q", recipient="a@localhost", transport="maildir", reason="disk", retry_at=99.0)
    )
    rcpt = state.messages["Q"].recipient("a@localhost")
    assert rcpt is not None
    assert (rcpt.status, rcpt.attempts, rcpt.next_attempt, rcpt.last_error) == ("pending", 1, 99.0, "disk")


def test_duplicates_and_strangers_change_nothing() -> None:
    state = apply(QueueState(), accepted(recipients=("a@localhost",)))
    assert apply(state, accepted(recipients=("a@localhost",))) is state  # same queue id again
    assert apply(state, succeeded("nobody@localhost")) is state
    assert apply(state, succeeded("a@localhost", queue_id="OTHER")) is state
    done = apply(state, succeeded("a@localhost"))
    assert apply(done, succeeded("a@localhost")) is done  # a second success after completion
    assert apply(state, qe.SessionClosed(at=1.0, session_id="S", reason="quit")) is state


def test_apply_does_not_change_its_input() -> None:
    before = apply(QueueState(), accepted())
    snapshot = (before.messages, before.delivered)
    apply(before, succeeded("a@localhost"))
    assert (before.messages, before.delivered) == snapshot
    assert before.messages["Q"].recipients[0].status == "pending"


def test_operator_actions_fold_into_the_state() -> None:
    from vsmtp.queue.state import from_snapshot, to_snapshot

    state = apply(
        QueueState(),
        qe.MessageAccepted(at=1.0, queue_id="Q", session_id="S", reverse_path="a@b", recipients=("x@far.test",), blob=b"Q", size=1),
    )
    state = apply(state, qe.DeliveryDeferred(at=2.0, queue_id="Q", recipient="x@far.test", transport="smtp", reason="r", retry_at=999.0))
    held = apply(state, qe.MessageHeld(at=3.0, queue_id="Q", by="t"))
    assert held.messages["Q"].held and from_snapshot(to_snapshot(held)) == held
    retried = apply(held, qe.RetryRequested(at=4.0, queue_id="Q", by="t"))
    assert retried.messages["Q"].recipients[0].next_attempt == 0.0 and retried.messages["Q"].held
    released = apply(retried, qe.MessageReleased(at=5.0, queue_id="Q", by="t"))
    assert not released.messages["Q"].held
    removed = apply(released, qe.MessageRemoved(at=6.0, queue_id="Q", by="t"))
    assert "Q" not in removed.messages and removed.removed == 1
    assert apply(removed, qe.MessageHeld(at=7.0, queue_id="Q", by="t")) == removed  # gone: nothing to hold


def test_a_version_1_snapshot_still_reads() -> None:
    from vsmtp.queue.state import from_snapshot

    old = {
        "version": 1,
        "position": 7,
        "counters": [1, 0, 0, 0],
        "messages": [["Q", "a@b", b"Q", 1, 1.0, "", [["x@l", "pending", 0, 0.0, ""]]]],
    }
    state = from_snapshot(old)
    assert state.position == 7 and not state.messages["Q"].held and state.removed == 0


def test_every_operator_action_has_its_own_fold_and_an_unknown_one_is_refused() -> None:
    actions = [cls for cls in qe.EVENTS.values() if issubclass(cls, qe.OperatorAction)]
    assert actions and all(cls.TAG in QUEUE_TAGS for cls in actions)

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class MessageFrozen(qe.OperatorAction):  # an action no fold knows (never registered as an event)
        pass

    state = apply(QueueState(), accepted())
    with pytest.raises(TypeError, match="operator action"):
        apply(state, MessageFrozen(at=2.0, queue_id="Q", by="t"))


def test_version_1_delivery_events_are_upcast_with_their_facts() -> None:
    """Records written before the v2 delivery events read with code, status and host filled in."""
    from vsmtp_journal import Record

    failed = qe.decode(
        Record(position=1, tag="delivery.failed", version=1, payload={
            "at": 1.0, "queue_id": "Q", "recipient": "a@far.test", "transport": "smtp",
            "reason": "mx.far.test[127.0.0.1]: 550 5.1.1 no such user",
        })
    )  # fmt: skip
    assert isinstance(failed, qe.DeliveryFailed)
    assert (failed.code, failed.status, failed.host, failed.address, failed.expired) == (550, "5.1.1", "mx.far.test", "127.0.0.1", False)
    expired = qe.decode(
        Record(position=2, tag="delivery.failed", version=1, payload={
            "at": 1.0, "queue_id": "Q", "recipient": "a@far.test", "transport": "smtp",
            "reason": "message expired: not delivered in 5 days in the queue (last error: x)",
        })
    )  # fmt: skip
    assert isinstance(expired, qe.DeliveryFailed) and expired.expired and expired.status == "4.4.7"
    deferred = qe.decode(
        Record(position=3, tag="delivery.deferred", version=1, payload={
            "at": 1.0, "queue_id": "Q", "recipient": "a@far.test", "transport": "maildir",
            "reason": "cannot write to the Maildir: [Errno 28] No space left on device", "retry_at": 2.0,
        })
    )  # fmt: skip
    assert isinstance(deferred, qe.DeliveryDeferred) and (deferred.code, deferred.status, deferred.host) == (0, "4.0.0", "")
