"""Checkpoints, retention and a journal short of room, on a real server over real SMTP."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from typing import Any

import trio
from vsmtp_journal import Journal, verify

from vsmtp.config import Config
from vsmtp.daemon import Running
from vsmtp.queue.projection import QueueProjection, latest_checkpoint, rebuild
from vsmtp.queue.state import from_snapshot, to_snapshot

from ..conftest import has_tag, maildir_files, port_of, sendmail, wait_delivered, wait_journal, with_changes


async def settled(running: Running) -> None:
    """Until the projection has folded everything committed (bounded)."""
    assert running.projection is not None
    with trio.fail_after(10):
        while running.projection.state.position < running.journal.last_position():
            await running.projection.wait_position(running.journal.last_position())


def test_a_snapshot_round_trips_the_state(tmp_path: Any) -> None:
    from vsmtp.queue import events as qe
    from vsmtp.queue.state import QueueState, apply

    state = apply(
        QueueState(),
        qe.MessageAccepted(
            at=5.0, queue_id="Q", session_id="S", reverse_path="a@b", recipients=("x@l", "y@l"), blob=b"Q", size=3,
            recipient_params={"y@l": {"NOTIFY": "success,delay"}},
        ),
    )  # fmt: skip
    state = apply(state, qe.DeliveryDeferred(at=6.0, queue_id="Q", recipient="x@l", transport="maildir", reason="r", retry_at=9.0))
    state = apply(state, qe.MessageDelayWarned(at=7.0, queue_id="Q", warning_id="W", recipients=("y@l",)))
    assert state.messages["Q"].delay_warned and state.messages["Q"].recipients[1].notify == "SUCCESS,DELAY"
    assert from_snapshot(to_snapshot(state)) == state


async def test_a_restart_loads_the_checkpoint_and_replays_only_the_tail(start_server: Callable[..., Any], config: Config) -> None:
    config = with_changes(config, journal={"checkpoint_interval": 0.05})
    running = await start_server(config)
    await sendmail(running, "a@example.org", ["bob@localhost"], "Subject: 1\r\n\r\nx\r\n")
    await wait_delivered(running, 1)
    await settled(running)
    with trio.fail_after(10):
        while running.projection.checkpoints == 0 or max(running.journal.snapshots()) < running.projection.state.position:
            await trio.sleep(0.02)
    running.cancel_scope.cancel()
    await trio.sleep(0.1)
    with Journal(config.journal.path) as journal:
        journal.append(
            "session.opened",
            1,
            {"at": 1.0, "session_id": "S", "listener": "mx", "peer_host": "::1", "peer_port": 1, "local_host": "::1", "local_port": 25},
        )
        projection = QueueProjection(journal)
        projection.catch_up()
        assert projection.loaded_from > 0  # started from the snapshot ...
        assert projection.loaded_from < projection.state.position == journal.last_position()  # ... then the tail
        assert projection.state == rebuild(journal)
        assert projection.state.completed == 1


async def test_retention_removes_finished_bodies_and_old_records_but_keeps_pending_ones(
    start_server: Callable[..., Any], config: Config
) -> None:
    config = with_changes(
        config,
        relay={"networks": ("127.0.0.0/8",)},  # remote mail stays pending: remote delivery does not exist yet
        journal={"checkpoint_interval": 0.05},
        retention={"blobs": 0.0, "events": 0.0, "interval": 0.3},
    )
    running = await start_server(config)
    for n in range(3):
        await sendmail(running, "a@example.org", ["bob@localhost"], f"Subject: {n}\r\n\r\nbody {n}\r\n")
    await sendmail(running, "a@example.org", ["far@example.com"], "Subject: pending\r\n\r\nwaits\r\n")
    await wait_delivered(running, 3)
    with trio.fail_after(10):  # a pass or two (each one is journaled, and purged by the next)
        while not (
            running.journal.horizon() > 0
            and running.journal.stats()["blobs"] == 1
            and any(r.tag == "journal.purged" for r in running.journal.read(0))
        ):
            await trio.sleep(0.05)
    [pending] = running.projection.state.messages.values()
    assert running.journal.blob(pending.blob) is not None  # the pending message keeps its body
    assert running.journal.get(1) is None  # the oldest records are gone
    assert len(maildir_files(config, "bob")) == 3  # what was delivered stays delivered
    report = verify(running.journal)
    assert report.clean, report.problems
    await settled(running)
    assert rebuild(running.journal) == running.projection.state  # from the horizon's snapshot
    running.cancel_scope.cancel()


async def test_mail_gets_452_while_the_journal_is_short_of_room_and_recovers_by_itself(
    start_server: Callable[..., Any], config: Config
) -> None:
    config = with_changes(
        config,
        journal={"max_size": 2 * 1024 * 1024, "min_free": 128 * 1024},
        retention={"blobs": 0.0, "interval": 1.0},
    )
    running = await start_server(config)
    body = "Subject: big\r\n\r\n" + ("y" * 998 + "\r\n") * 300  # 300 KB
    accepted: list[str] = []

    def fill() -> str:
        """Send until the server says 452; return where it said it."""
        with smtplib.SMTP("127.0.0.1", port_of(running), timeout=10) as client:
            for _ in range(60):  # bounded: 2 MiB holds a handful of these
                client.ehlo("c")
                code, _ = client.mail("a@example.org", [f"SIZE={len(body)}"])
                if code == 452:
                    return "MAIL"
                assert code == 250
                assert client.rcpt("bob@localhost")[0] == 250
                code, text = client.data(body)
                if code == 452:
                    return "DATA"
                assert code == 250, text
                accepted.append(text.decode().rsplit(" ", 1)[-1])
        raise AssertionError("the journal never ran short")

    where = await trio.to_thread.run_sync(fill)
    assert where in ("MAIL", "DATA") and accepted

    def mail_reply() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port_of(running), timeout=10) as client:
            client.ehlo("c")
            return client.mail("a@example.org", [f"SIZE={len(body)}"])

    code, text = await trio.to_thread.run_sync(mail_reply)
    assert (code, text) == (452, b"4.3.1 Insufficient system storage")
    records = await wait_journal(running, has_tag("session.mail_refused"))
    assert any(r.tag == "session.mail_refused" for r in records)
    # Delivery finishes the accepted messages; retention removes their bodies; room returns.
    with trio.fail_after(20):
        while (await trio.to_thread.run_sync(mail_reply))[0] != 250:
            await trio.sleep(0.2)
    await sendmail(running, "a@example.org", ["bob@localhost"], body)
    await wait_delivered(running, len(accepted) + 1)
    assert len(maildir_files(config, "bob")) == len(accepted) + 1  # nothing accepted was lost
    assert latest_checkpoint(running.journal) is not None or running.journal.snapshots() == []
    running.cancel_scope.cancel()
