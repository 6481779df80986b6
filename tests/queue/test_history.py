"""A message's history (`vsmtp trace`) is told in the order things happened, not the order
records reached the journal: several processes commit, and some records ride along with a
later commit."""

from __future__ import annotations

from pathlib import Path

from vsmtp_journal import Journal

from vsmtp.queue import events as qe
from vsmtp.queue import history


def test_a_trace_is_in_time_order(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal") as journal:
        session = "S1"
        appends = [
            qe.SessionOpened(
                at=10.0, session_id=session, listener="mx", peer_host="127.0.0.1", peer_port=1, local_host="127.0.0.1", local_port=25
            ),
            qe.MessageAccepted(
                at=11.0, queue_id="Q1", session_id=session, reverse_path="a@example.org", recipients=("b@example.org",), blob=b"Q1", size=3
            ),
            # the delivery process committed first ...
            qe.DeliverySucceeded(at=12.0, queue_id="Q1", recipient="b@example.org", transport="maildir", detail="new/x"),
            # ... the session's record of the 250, written before it, came with a later commit
            qe.DataReceived(at=11.0, session_id=session, size=3, reply="250 2.0.0 Ok: queued as Q1"),
            qe.SessionClosed(at=11.5, session_id=session, reason="quit"),
        ]
        for event in appends:
            journal.append_batch([qe.to_append(event)])
        found = history.trace(journal, "Q1")
    assert found is not None
    assert [r.tag for r in found.records] == [
        "session.opened",
        "message.accepted",
        "session.data",
        "session.closed",
        "delivery.succeeded",
    ]
