"""The mbox transport: RFC 4155 files that Python's mailbox module reads back."""

from __future__ import annotations

import mailbox
from pathlib import Path
from typing import Any

import trio

from vsmtp.config import Config
from vsmtp.delivery.transports import mbox

from ..conftest import maildir_files, sendmail, wait_delivered, with_changes


def test_messages_append_and_read_back_byte_exact(tmp_path: Path) -> None:
    path = tmp_path / "box.mbox"
    first = b"Subject: one\r\n\r\nline one\r\nline two\r\n"
    second = b"Subject: two\r\n\r\nFrom here on it is quoted\r\n>From already quoted\r\nend"
    assert mbox.deliver(path, "a@example.org", [first], when=0.0) == 0
    assert mbox.deliver(path, "", [second], when=86400.0) > 0
    assert path.stat().st_mode & 0o077 == 0
    box = mailbox.mbox(path)
    one, two = box.get_bytes(0), box.get_bytes(1)
    assert one == first.replace(b"\r\n", b"\n")  # byte-exact, in the mbox's line ends
    assert two == b"Subject: two\n\n>From here on it is quoted\n>>From already quoted\nend\n"
    assert box.get_message(0).get_from() == "a@example.org Thu Jan  1 00:00:00 1970"
    assert box.get_message(1).get_from().startswith("MAILER-DAEMON Fri Jan  2 ")
    box.close()


def test_a_recovered_delivery_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "box.mbox"
    body = b"Received: from c ([127.0.0.1])\r\n\tby mx.test (vsmtp) with ESMTP id Q1;\r\n\tdate\r\n\r\nx\r\n"
    assert not mbox.has_delivery(path, "bob@localhost", "Q1")
    mbox.deliver(path, "a@b.example", [b"Return-Path: <a@b.example>\r\nDelivered-To: bob@localhost\r\n", body])
    assert mbox.has_delivery(path, "bob@localhost", "Q1")
    assert not mbox.has_delivery(path, "bob@localhost", "Q2") and not mbox.has_delivery(path, "carol@localhost", "Q1")


async def test_local_mail_to_mbox_over_smtp(start_server: Any, config: Config, tmp_path: Path) -> None:
    config = with_changes(config, delivery={"mbox": str(tmp_path / "spool" / "{user}"), "mailboxes": {"alice": "mbox"}})
    running = await start_server(config)
    text = "Subject: to an mbox\r\n\r\nFrom the start\r\nsecond line\r\n"
    await sendmail(running, "a@example.org", ["alice@localhost", "bob@localhost"], text)
    await wait_delivered(running, 1)
    box = mailbox.mbox(tmp_path / "spool" / "alice")
    [message] = list(box)
    assert message["Return-Path"] == "<a@example.org>" and message["Delivered-To"] == "alice@localhost"
    assert message.get_payload(decode=True) == b">From the start\nsecond line\n"
    assert box.get_bytes(0).endswith(b"Subject: to an mbox\n\n>From the start\nsecond line\n")
    box.close()
    assert len(maildir_files(config, "bob")) == 1  # bob keeps the default, a Maildir
    records = [r for r in running.journal.read(0) if r.tag == "delivery.succeeded"]
    assert {r.payload["transport"] for r in records} == {"mbox", "maildir"}
    running.cancel_scope.cancel()
    await trio.lowlevel.checkpoint()
