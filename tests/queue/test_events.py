"""Journal events: stable tags, lossless round trips, upcasting of old versions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from vsmtp_journal import Journal, Record

from vsmtp.queue import events as ev

SAMPLES: list[ev.JournalEvent] = [
    ev.SessionOpened(at=1.0, session_id="S", listener="mx", peer_host="::1", peer_port=5, local_host="::1", local_port=25),
    ev.HeloReceived(at=1.0, session_id="S", verb="EHLO", name="c"),
    ev.MailReceived(at=1.0, session_id="S", reverse_path="a@b.c", params={"SIZE": "10", "SMTPUTF8": None}),
    ev.RecipientAccepted(at=1.0, session_id="S", address="x@localhost"),
    ev.RecipientRejected(at=1.0, session_id="S", address="x@else.org", reply="554 5.7.1 Relay access denied"),
    ev.MessageAccepted(
        at=1.0,
        queue_id="Q",
        session_id="S",
        reverse_path="",
        recipients=("a@localhost", "b@localhost"),
        blob=b"Q",
        size=3,
        mail_params={"RET": "HDRS"},
        recipient_params={"a@localhost": {"NOTIFY": "NEVER"}},
    ),
    ev.DeliverySucceeded(at=1.0, queue_id="Q", recipient="a@localhost", transport="maildir", detail="/x"),
    ev.DeliveryDeferred(at=1.0, queue_id="Q", recipient="a@localhost", transport="maildir", reason="r", retry_at=5.0),
    ev.DeliveryFailed(at=1.0, queue_id="Q", recipient="a@localhost", transport="maildir", reason="r"),
    ev.SessionClosed(at=1.0, session_id="S", reason="quit"),
    ev.TlsStarted(at=1.0, session_id="S", version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", bits=256),
    ev.Authenticated(at=1.0, session_id="S", mechanism="PLAIN", username="alice@example.org"),
    ev.AuthFailed(at=1.0, session_id="S", mechanism="LOGIN", username="bob", reply="535 5.7.8 Authentication credentials invalid"),
    ev.DataReceived(at=1.0, session_id="S", size=10, reply="250 2.0.0 Ok: queued as Q"),
    ev.MailRefused(at=1.0, session_id="S", reverse_path="a@b.c", reply="452 4.3.1 Insufficient system storage"),
    ev.JournalPurged(at=1.0, blobs=3, records=10, through=10),
    ev.MessageBounced(at=1.0, queue_id="Q", bounce_id="B", recipients=("a@localhost",)),
    ev.MessageDelayWarned(at=1.0, queue_id="Q", warning_id="W", recipients=("a@localhost",)),
    ev.MessageQuarantined(at=1.0, queue_id="Q", queue="spam", by="rules:spam"),
    ev.MessageFiltered(at=1.0, queue_id="Q", verdict="next"),
    ev.MessageModified(
        at=1.0, queue_id="Q", stage="postq", by="rules:x", blob=b"Q.1", size=10, reverse_path="a@b.example", recipients=("c@d.example",)
    ),
    ev.RuleVerdict(at=1.0, session_id="S", stage="rcpt", by="rules:x", verdict="reject", reply="550 5.7.1 no", recipient="a@b"),
    ev.RuleAction(at=1.0, session_id="S", queue_id="Q", stage="data", by="rules:x", action="add_header", args=("X-A", "1")),
    ev.DeliveryAttempted(at=1.0, queue_id="Q", host="mx.far.test", address="192.0.2.1", tls=True, reply="250 2.0.0 ok"),
    ev.MessageExpired(at=1.0, queue_id="Q", recipients=("a@far.test",)),
    ev.DeliveryStarted(at=1.0, queue_id="Q", recipients=("a@far.test",), host="mx.far.test", address="192.0.2.1"),
    ev.PossibleDuplicate(at=1.0, queue_id="Q", recipient="a@far.test", detail="mx.far.test[192.0.2.1]: 250 ok"),
    ev.MessageHeld(at=1.0, queue_id="Q", by="vsmtp queue hold (uid 0)"),
    ev.MessageReleased(at=1.0, queue_id="Q", by="vsmtp queue release (uid 0)"),
    ev.RetryRequested(at=1.0, queue_id="Q", by="vsmtp queue retry (uid 0)"),
    ev.MessageRemoved(at=1.0, queue_id="Q", by="vsmtp queue remove (uid 0)"),
]


def test_every_event_kind_has_a_sample() -> None:
    assert {type(e) for e in SAMPLES} == set(ev.EVENTS.values())


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.TAG)
def test_round_trip_through_the_journal(event: ev.JournalEvent, tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        journal.append(*ev.encode(event))
        record = journal.get(1)
    assert record is not None
    assert ev.decode(record) == event


def test_tags_are_stable() -> None:
    # A tag is forever: this list only ever grows.
    assert set(ev.EVENTS) >= {
        "session.opened",
        "session.helo",
        "session.mail",
        "recipient.accepted",
        "recipient.rejected",
        "message.accepted",
        "delivery.succeeded",
        "delivery.deferred",
        "delivery.failed",
        "session.closed",
    }


def test_unknown_tags_and_future_versions_are_kept_not_lost() -> None:
    assert isinstance(ev.decode(Record(1, "plugin.thing", 1, {"a": 1})), ev.UnknownEvent)
    assert isinstance(ev.decode(Record(1, "session.helo", 99, {})), ev.UnknownEvent)


def test_an_old_version_is_upcast_on_read(tmp_path: Path) -> None:
    # Version 1 of a (test-only) event stored a single "name"; version 2 splits it in two.
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Greeted(ev.JournalEvent):
        TAG = "test.greeted"
        name: str

    with Journal(tmp_path / "j") as journal:
        journal.append(*ev.encode(Greeted(at=1.0, name="Ada Lovelace")))
        del ev.EVENTS["test.greeted"]  # the code changes: version 2 replaces the class

        @dataclass(frozen=True, slots=True, kw_only=True)
        class GreetedV2(ev.JournalEvent):
            TAG = "test.greeted"
            VERSION = 2
            first: str
            last: str

        @ev.upcaster("test.greeted", 1)
        def split_name(payload: dict[str, Any]) -> dict[str, Any]:
            first, _, last = payload.pop("name").partition(" ")
            return {**payload, "first": first, "last": last}

        try:
            record = journal.get(1)
            assert record is not None and record.version == 1
            assert ev.decode(record) == GreetedV2(at=1.0, first="Ada", last="Lovelace")
        finally:
            del ev.EVENTS["test.greeted"]


def test_describe_is_one_line() -> None:
    for event in SAMPLES:
        assert "\n" not in event.describe()
        assert all(f.name in event.describe() for f in dataclasses.fields(event) if f.name != "at")
