"""A large message is not held in memory while it arrives: past `limits.memory_per_message`
it goes to a spill file beside the journal, is copied into the journal in chunks, and is
delivered unchanged; what the session does to a message (bare line ends made CRLF, a final
CRLF after BDAT, the rules' header edits, a rule that reads it whole) works the same on a
spilled one, and a disk that fills while it spills gets 452 4.3.1, with nothing lost."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import smtplib
from pathlib import Path
from typing import Any

import trio

from vsmtp.config import Config
from vsmtp.daemon import Running

from ..clients import Peer
from ..conftest import maildir_files, port_of, wait_delivered, with_changes
from ..rules.test_stages import rules_file
from .test_room import small_disk  # noqa: F401 - the fixture

KEEP = 64 * 1024


def big_message(size: int, subject: str = "big") -> bytes:
    lines = b"".join(b"%07d the quick brown fox jumps over the lazy dog\r\n" % n for n in range(size // 40 + 1))
    return f"From: a@example.org\r\nTo: bob@localhost\r\nSubject: {subject}\r\n\r\n".encode() + lines[:size] + b"\r\n"


def send(running: Running, raw: bytes) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port_of(running), timeout=30) as client:
        return client.sendmail("a@example.org", ["bob@localhost"], raw)


def the_message(config: Config, index: int = -1) -> bytes:
    """The delivered file as the client sent it: without the lines delivery and we put first."""
    data = maildir_files(config, "bob")[index].read_bytes()
    return data[data.index(b"From: a@example.org") :]


async def test_a_large_message_is_spilled_stored_in_chunks_and_delivered_unchanged(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"memory_per_message": KEEP}))
    raw = big_message(6 << 20)
    held = {"memory": 0, "octets": 0}

    async def watch() -> None:
        assert running.smtp is not None
        while True:  # cancelled when the message is in
            flying = running.smtp.bodies_in_flight()
            held["memory"], held["octets"] = max(held["memory"], flying.memory), max(held["octets"], flying.octets)
            await trio.sleep(0.002)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        assert await trio.to_thread.run_sync(send, running, raw) == {}
        nursery.cancel_scope.cancel()
    await wait_delivered(running, 1)
    assert hashlib.sha256(the_message(config)).digest() == hashlib.sha256(raw).digest()
    assert held["octets"] > 4 << 20  # the watch saw the transfer
    assert held["memory"] <= KEEP + 256 * 1024 + 65536  # what is kept, one write's worth, one read
    [accepted] = [r for r in running.journal.read(0) if r.tag == "message.accepted"]
    chunks = list(running.journal.blob_chunks(accepted.payload["blob"]))
    assert sum(map(len, chunks)) == accepted.payload["size"], (len(chunks), accepted.payload["size"], len(raw))
    assert len(chunks) == 7, (len(chunks), accepted.payload["size"], len(raw))
    assert sorted(p.name for p in Path(config.journal.path).iterdir()) == ["data.mdb", "lock.mdb"]  # no spill file is left


async def test_bare_line_ends_are_made_crlf_in_the_spilled_part_too(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"memory_per_message": 4096}, smtp={"bare_line_endings": "normalize"}))
    lines = b"".join(b"line %05d ends bare\n" % n if n % 3 else b"line %05d ends in a CR\r" % n for n in range(20_000))
    body = b"Subject: bare\r\n\r\n" + lines + b"end\r\n"
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    await peer.send(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
    assert (await peer.replies(4))[3].startswith("354")
    await peer.send(body + b".\r\n")
    assert (await peer.replies(1))[0].startswith("250")
    await peer.aclose()
    await wait_delivered(running, 1)
    stored = maildir_files(config, "bob")[0].read_bytes()
    assert stored.endswith(b"Subject: bare\r\n\r\n" + re.sub(rb"\r\n|\r|\n", b"\r\n", lines) + b"end\r\n")
    assert b"\r\n" in stored and stored.count(b"\n") == stored.count(b"\r\n") == stored.count(b"\r")


async def test_a_large_bdat_message_without_a_final_crlf_is_stored_with_one(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"memory_per_message": KEEP}))
    body = big_message(1 << 20)[:-2] + b"no line end at the very end"
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    await peer.send(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\n")
    await peer.replies(3)
    half = len(body) // 2
    await peer.send(b"BDAT %d\r\n" % half + body[:half] + b"BDAT %d LAST\r\n" % (len(body) - half) + body[half:])
    answers = await peer.replies(2)
    assert answers[0].startswith("250") and answers[1].startswith("250 2.0.0"), answers
    await peer.aclose()
    await wait_delivered(running, 1)
    assert the_message(config) == body + b"\r\n"


RULES = """
@rule.data
def mark(ctx):
    ctx.add_header("X-Seen-Size", str(ctx.message.size))
    ctx.set_header("Subject", "edited")

@rule.data
def read_it_all(ctx):
    if ctx.message.header("X-Read-Whole"):
        ctx.add_header("X-Whole-Digest", __import__("hashlib").sha256(ctx.message.raw).hexdigest())
"""


async def test_the_rules_edit_and_read_a_spilled_message(start_server: Any, config: Config, tmp_path: Path) -> None:
    changed = dataclasses.replace(with_changes(config, limits={"memory_per_message": KEEP}), rules=rules_file(tmp_path, RULES))
    running = await start_server(changed)
    raw = big_message(2 << 20)
    assert await trio.to_thread.run_sync(send, running, raw) == {}
    whole = raw.replace(b"Subject: big\r\n", b"Subject: big\r\nX-Read-Whole: yes\r\n")
    assert await trio.to_thread.run_sync(send, running, whole) == {}
    await wait_delivered(running, 2)
    first, second = (maildir_files(config, "bob")[i].read_bytes() for i in (0, 1))
    if b"X-Read-Whole" in first:
        first, second = second, first
    head, _, body = first.partition(b"\r\n\r\n")
    assert f"X-Seen-Size: {len(raw)}".encode() in head and b"Subject: edited" in head and b"Subject: big" not in head
    assert body == raw.partition(b"\r\n\r\n")[2]  # the body byte for byte
    assert f"X-Whole-Digest: {hashlib.sha256(whole).hexdigest()}".encode() in second
    assert second.partition(b"\r\n\r\n")[2] == body


async def test_a_disk_that_fills_while_a_message_spills_gets_452_and_loses_nothing(
    start_server: Any,
    config: Config,
    small_disk: Path,  # noqa: F811 - the fixture
) -> None:
    config = with_changes(
        config,
        journal={"path": str(small_disk / "journal"), "min_free": 1 << 20},
        limits={"memory_per_message": KEEP},
        delivery={"enabled": False},
    )
    running = await start_server(config)
    assert await trio.to_thread.run_sync(send, running, big_message(10_000, "first")) == {}
    too_big = big_message(30 << 20)  # on a 24 MiB disk, not declared: it spills until the disk is full

    def refused() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port_of(running), timeout=60) as client:
            client.ehlo("client.example")
            client.mail("a@example.org")
            client.rcpt("bob@localhost")
            return client.data(too_big)

    code, text = await trio.to_thread.run_sync(refused)
    assert (code, text.split()[0]) == (452, b"4.3.1")
    assert await trio.to_thread.run_sync(send, running, big_message(10_000, "after")) == {}  # the space came back
    assert len([r for r in running.journal.read(0) if r.tag == "message.accepted"]) == 2
