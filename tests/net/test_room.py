"""Room for a message, in memory and on the disk: 452 4.3.1 at MAIL (a declared SIZE that does
not fit), at DATA, and at the end of a transfer that would not fit; on a small filesystem,
MAIL is refused before the disk is full, nothing acknowledged is lost, and delivery resumes
by itself when space returns. A full Maildir leaves nothing in tmp/."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from vsmtp.config import Config
from vsmtp.delivery.transports import maildir

from ..clients import Peer
from ..conftest import maildir_files, port_of, wait_delivered, with_changes


async def test_bodies_in_flight_have_a_budget(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"bodies_in_flight": 100_000}))
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    await peer.send(b"EHLO c.example\r\nMAIL FROM:<a@example.org> SIZE=200000\r\n")
    assert (await peer.replies(2))[1].startswith("452 4.3.1")  # declared: refused at once
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 150  # 150 KB, not declared
    await peer.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
    assert (await peer.replies(3))[2].startswith("354")
    await peer.send(big + b".\r\n")
    assert (await peer.replies(1))[0].startswith("452 4.3.1")  # read to its end, then refused
    small = b"Subject: small\r\n\r\nhi\r\n"
    await peer.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
    assert (await peer.replies(3))[2].startswith("354")
    await peer.send(small + b".\r\n")
    assert (await peer.replies(1))[0].startswith("250")  # the budget is free again
    await peer.aclose()
    await wait_delivered(running, 1)
    assert len(maildir_files(config, "bob")) == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 24 MiB ext4 filesystem of our own: an image file the test makes, loop-mounted for
    the test and unmounted after (a tmpfs where loop devices are not to be had)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root and mount(8)")
    where, image = tmp_path / "small", tmp_path / "small.ext4"
    where.mkdir()
    with image.open("wb") as out:
        out.truncate(24 << 20)
    mkfs = ["mkfs.ext4", "-q", "-F", "-m", "0", str(image)]
    made = shutil.which("mkfs.ext4") and subprocess.run(mkfs, capture_output=True).returncode == 0
    done = subprocess.run(["mount", "-o", "loop", str(image), str(where)], capture_output=True, text=True) if made else None
    if done is None or done.returncode != 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(where)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a loop image or a tmpfs here: {done.stderr.strip()}")
    where.chmod(0o700)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)  # if still busy


def test_a_full_maildir_leaves_nothing_in_tmp(small_disk: Path) -> None:
    box = small_disk / "Maildir"
    with pytest.raises(OSError):
        maildir.deliver(box, "1.V1.host", [b"Subject: x\r\n\r\n", b"y" * (30 << 20)])  # 30 MiB on 24
    assert list((box / "tmp").iterdir()) == [] and list((box / "new").iterdir()) == []


async def test_on_a_small_disk_mail_is_refused_before_it_is_full_and_delivery_resumes(
    start_server: Any, config: Config, small_disk: Path
) -> None:
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"b" * (8 << 20))  # someone else's 8 MiB on the disk, removed later
    config = with_changes(
        config,
        journal={"path": str(small_disk / "journal"), "min_free": 3 << 20},
        delivery={"maildir": str(small_disk / "mail" / "{user}" / "Maildir"), "retry_first": 0.2, "retry_max": 0.5},
    )
    running = await start_server(config)
    body = b"Subject: fill\r\n\r\n" + (b"y" * 998 + b"\r\n") * 200  # 200 KB
    accepted = 0

    async def one() -> str:
        peer = await Peer.connect(port_of(running))
        await peer.replies(1)
        await peer.send(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n")
        mail = (await peer.replies(2))[1]
        if not mail.startswith("250"):
            await peer.aclose()
            return mail
        await peer.send(b"RCPT TO:<bob@localhost>\r\nDATA\r\n")
        data = (await peer.replies(2))[1]
        if not data.startswith("354"):  # 452 at DATA: the disk ran short after MAIL
            await peer.aclose()
            return data
        await peer.send(body + b".\r\n")
        reply = (await peer.replies(1))[0]
        await peer.aclose()
        return reply

    with trio.fail_after(60):
        while True:  # bounded by the filesystem: it has 24 MiB
            reply = await one()
            if reply.startswith("452 4.3.1"):
                break
            assert reply.startswith("250"), reply
            accepted += 1
    free = os.statvfs(small_disk)
    assert free.f_bavail * free.f_frsize > 1 << 20  # refused before the disk was full
    assert accepted >= 10
    records = [r for r in running.journal.read(0) if r.tag == "message.accepted"]
    assert len(records) == accepted and all(running.journal.blob(r.payload["blob"]) for r in records)  # nothing lost
    ballast.unlink()  # space returns
    assert (await one()).startswith("250")  # by itself: no restart
    await wait_delivered(running, accepted + 1, timeout=30)
    new = small_disk / "mail" / "bob" / "Maildir" / "new"
    assert len(list(new.iterdir())) == accepted + 1
    assert list((small_disk / "mail" / "bob" / "Maildir" / "tmp").iterdir()) == []
    running.cancel_scope.cancel()


async def test_the_bodies_in_flight_are_counted_back_however_a_transaction_ends(start_server: Any, config: Config) -> None:
    """The tally each body keeps returns to zero: after a message, an RSET, and a client that
    leaves in the middle of its data."""
    running = await start_server(config)
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    await peer.send(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
    assert (await peer.replies(4))[3].startswith("354")
    await peer.send(b"Subject: one\r\n\r\n" + (b"x" * 98 + b"\r\n") * 50 + b".\r\n")
    assert (await peer.replies(1))[0].startswith("250")
    assert running.smtp.bodies_in_flight() == (0, 0)
    await peer.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
    assert (await peer.replies(3))[2].startswith("354")
    await peer.send(b"Subject: two\r\n\r\n" + (b"y" * 98 + b"\r\n") * 70)
    with trio.fail_after(5):
        while running.smtp.bodies_in_flight().octets < 7000:  # received, not ended
            await trio.sleep(0.01)
    await peer.aclose()  # gone in the middle of its data
    with trio.fail_after(5):
        while running.smtp.bodies_in_flight() != (0, 0):
            await trio.sleep(0.01)
