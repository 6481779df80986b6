"""Journal events: stable tags, lossless round trips, upcasting of old versions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from vsmtp_journal import Journal, Record

from vsmtp.queue import events as qe

SAMPLES: list[qe.JournalEvent] = [
    qe.SessionOpened(at=1.0, session_id="S", listener="mx", peer_host="::1", peer_port=5, local_host="::1", local_port=25),
    qe.HeloReceived(at=1.0, session_id="S", verb="EHLO", name="c"),
    qe.MailReceived(at=1.0, session_id="S", reverse_path="a@b.c", params={"SIZE": "10", "SMTPUTF8": None}),
    qe.RecipientAccepted(at=1.0, session_id="S", address="x@localhost"),
    qe.RecipientRejected(at=1.0, session_id="S", address="x@else.org", reply="554 5.7.1 Relay access denied"),
    qe.MessageAccepted(
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
    qe.DeliverySucceeded(at=1.0, queue_id="Q", recipient="a@localhost", transport="maildir", detail="/x"),
    qe.DeliveryDeferred(at=1.0, queue_id="Q", recipient="a@localhost", transport="maildir", reason="r", retry_at=5.0),
    qe.DeliveryFailed(at=1.0, queue_id="Q", recipient="a@localhost", transport="maildir", reason="r"),
    qe.SessionClosed(at=1.0, session_id="S", reason="quit"),
    qe.TlsStarted(at=1.0, session_id="S", version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", bits=256),
    qe.Authenticated(at=1.0, session_id="S", mechanism="PLAIN", username="alice@example.org"),
    qe.AuthFailed(at=1.0, session_id="S", mechanism="LOGIN", username="bob", reply="535 5.7.8 Authentication credentials invalid"),
    qe.DataReceived(at=1.0, session_id="S", size=10, reply="250 2.0.0 Ok: queued as Q"),
    qe.MailRefused(at=1.0, session_id="S", reverse_path="a@b.c", reply="452 4.3.1 Insufficient system storage"),
    qe.JournalPurged(at=1.0, blobs=3, records=10, through=10),
    qe.MessageBounced(at=1.0, queue_id="Q", bounce_id="B", recipients=("a@localhost",)),
    qe.MessageDelayWarned(at=1.0, queue_id="Q", warning_id="W", recipients=("a@localhost",)),
    qe.MessageQuarantined(at=1.0, queue_id="Q", queue="spam", by="rules:spam"),
    qe.MessageFiltered(at=1.0, queue_id="Q", verdict="next"),
    qe.MessageModified(
        at=1.0, queue_id="Q", stage="postq", by="rules:x", blob=b"Q.1", size=10, reverse_path="a@b.example", recipients=("c@d.example",)
    ),
    qe.RuleVerdict(at=1.0, session_id="S", stage="rcpt", by="rules:x", verdict="reject", reply="550 5.7.1 no", recipient="a@b"),
    qe.RuleAction(at=1.0, session_id="S", queue_id="Q", stage="data", by="rules:x", action="add_header", args=("X-A", "1")),
    qe.DeliveryAttempted(at=1.0, queue_id="Q", host="mx.far.test", address="192.0.2.1", tls=True, reply="250 2.0.0 ok"),
    qe.MessageExpired(at=1.0, queue_id="Q", recipients=("a@far.test",)),
    qe.DeliveryStarted(at=1.0, queue_id="Q", recipients=("a@far.test",), host="mx.far.test", address="192.0.2.1"),
    qe.PossibleDuplicate(at=1.0, queue_id="Q", recipient="a@far.test", detail="mx.far.test[192.0.2.1]: 250 ok"),
    qe.MessageHeld(at=1.0, queue_id="Q", by="vsmtp queue hold (uid 0)"),
    qe.MessageReleased(at=1.0, queue_id="Q", by="vsmtp queue release (uid 0)"),
    qe.RetryRequested(at=1.0, queue_id="Q", by="vsmtp queue retry (uid 0)"),
    qe.MessageRemoved(at=1.0, queue_id="Q", by="vsmtp queue remove (uid 0)"),
    qe.SpfChecked(at=1.0, session_id="S", result={"result": "pass", "identity": "mailfrom", "domain": "b.c", "sender": "a@b.c"}),
    qe.DkimVerified(at=1.0, session_id="S", result={"signatures": [{"result": "pass", "domain": "b.c", "selector": "s"}]}),
    qe.ArcVerified(at=1.0, session_id="S", result={"result": "pass", "sealers": ["lists.b.c"]}),
    qe.DmarcEvaluated(
        at=1.0,
        session_id="S",
        source_ip="192.0.2.1",
        envelope_from="b.c",
        envelope_to="localhost",
        result={"result": "pass", "header_from": "b.c", "record": {"p": "reject"}},
        spf={"result": "pass", "domain": "b.c"},
        dkim=({"result": "pass", "domain": "b.c", "selector": "s"},),
    ),
    qe.MessageSigned(at=1.0, queue_id="Q", method="dkim", signatures=("d=b.c s=s a=rsa-sha256",)),
    qe.MessageCorrupted(at=1.0, queue_id="Q", blob=b"Q", reason="checksum mismatch (100 octets)"),
    qe.SessionScreened(at=1.0, session_id="S", test="dnsbl", score=3, listed=("bl.example",), refused=True),
]


def test_every_event_kind_has_a_sample() -> None:
    assert {type(e) for e in SAMPLES} == set(qe.EVENTS.values())


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.TAG)
def test_round_trip_through_the_journal(event: qe.JournalEvent, tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        journal.append(*qe.encode(event))
        record = journal.get(1)
    assert record is not None
    assert qe.decode(record) == event


def test_tags_are_stable() -> None:
    # A tag is forever: this list only ever grows.
    assert set(qe.EVENTS) >= {
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
    assert isinstance(qe.decode(Record(1, "plugin.thing", 1, {"a": 1})), qe.UnknownEvent)
    assert isinstance(qe.decode(Record(1, "session.helo", 99, {})), qe.UnknownEvent)


def test_an_old_version_is_upcast_on_read(tmp_path: Path) -> None:
    # Version 1 of a (test-only) event stored a single "name"; version 2 splits it in two.
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Greeted(qe.JournalEvent):
        TAG = "test.greeted"
        name: str

    with Journal(tmp_path / "j") as journal:
        journal.append(*qe.encode(Greeted(at=1.0, name="Ada Lovelace")))
        del qe.EVENTS["test.greeted"]  # the code changes: version 2 replaces the class

        @dataclass(frozen=True, slots=True, kw_only=True)
        class GreetedV2(qe.JournalEvent):
            TAG = "test.greeted"
            VERSION = 2
            first: str
            last: str

        @qe.upcaster("test.greeted", 1)
        def split_name(payload: dict[str, Any]) -> dict[str, Any]:
            first, _, last = payload.pop("name").partition(" ")
            return {**payload, "first": first, "last": last}

        try:
            record = journal.get(1)
            assert record is not None and record.version == 1
            assert qe.decode(record) == GreetedV2(at=1.0, first="Ada", last="Lovelace")
        finally:
            del qe.EVENTS["test.greeted"]


def test_describe_is_one_line() -> None:
    for event in SAMPLES:
        assert "\n" not in event.describe()
        assert all(f.name in event.describe() for f in dataclasses.fields(event) if f.name != "at")
