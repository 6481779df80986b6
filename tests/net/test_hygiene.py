"""What a peer writes is clean before it is kept: no control or invisible character in HELO
names and paths, a final CRLF on every message, internationalized domains compared in both
their forms, and a quoted local part that needs no quotes taken as the same mailbox."""

from __future__ import annotations

from typing import Any

import pytest

from vsmtp.config import Config
from vsmtp.daemon import Running
from vsmtp.queue import events as qe

from ..clients import Peer
from ..conftest import maildir_files, port_of, wait_delivered, with_changes


async def dialogue(running: Running, *lines: bytes) -> list[str]:
    """Greeting, then each line and its reply."""
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    answers = []
    for line in lines:
        await peer.send(line)
        answers += await peer.replies(1)
    await peer.aclose()
    return answers


@pytest.mark.parametrize(
    "line",
    [
        b"EHLO client\x00.example\r\n",  # NUL
        b"HELO client\x07.example\r\n",  # BEL
        "EHLO client\u0085.example\r\n".encode(),  # NEL
    ],
)
async def test_control_characters_in_helo_are_refused(server: Running, line: bytes) -> None:
    [reply] = await dialogue(server, line)
    assert reply.startswith("501 5.5.4")


@pytest.mark.parametrize("character", ["\u0085", "\u2028", "\ufeff", "\u200b", "\x1b"])
async def test_control_and_invisible_characters_in_paths_are_refused(server: Running, character: str) -> None:
    mail = f"MAIL FROM:<al{character}ice@example.org> SMTPUTF8\r\n".encode()
    rcpt = f"RCPT TO:<bo{character}b@localhost>\r\n".encode()
    answers = await dialogue(server, b"EHLO client.example\r\n", mail, b"MAIL FROM:<a@example.org> SMTPUTF8\r\n", rcpt)
    assert answers[1].startswith("501 5.5.4") and answers[2].startswith("250") and answers[3].startswith("501 5.5.4")


async def test_a_bdat_message_without_a_final_crlf_is_stored_with_one(server: Running, config: Config) -> None:
    body = b"Subject: no final line end\r\n\r\nthe last line has no CRLF"
    answers = await dialogue(
        server,
        b"EHLO client.example\r\n",
        b"MAIL FROM:<a@example.org>\r\n",
        b"RCPT TO:<bob@localhost>\r\n",
        b"BDAT %d LAST\r\n" % len(body) + body,
    )
    assert answers[3].startswith("250 2.0.0")
    await wait_delivered(server, 1)
    assert maildir_files(config, "bob")[0].read_bytes().endswith(body + b"\r\n")


@pytest.mark.parametrize(
    ("configured", "written"),
    [("bücher.example", "xn--bcher-kva.example"), ("xn--bcher-kva.example", "bücher.example"), ("Bücher.Example", "bücher.example")],
)
async def test_a_local_domain_matches_in_both_of_its_forms(start_server: Any, config: Config, configured: str, written: str) -> None:
    running = await start_server(with_changes(config, local={"domains": ("localhost", configured)}))
    utf8 = b" SMTPUTF8" if not written.isascii() else b""
    answers = await dialogue(
        running,
        b"EHLO client.example\r\n",
        b"MAIL FROM:<a@example.org>" + utf8 + b"\r\n",
        f"RCPT TO:<anna@{written}>\r\n".encode(),
    )
    assert answers[2].startswith("250 2.1.5"), answers  # ours, not "relay access denied"


async def test_a_quoted_local_part_that_needs_no_quotes_is_the_same_mailbox(server: Running, config: Config) -> None:
    answers = await dialogue(
        server,
        b"EHLO client.example\r\n",
        b'MAIL FROM:<"alice"@example.org>\r\n',
        b'RCPT TO:<"bob"@localhost>\r\n',
        b"RCPT TO:<bob@localhost>\r\n",  # the same mailbox: accepted once
        b"DATA\r\n",
        b"Subject: quoted\r\n\r\nhi\r\n.\r\n",
    )
    assert [a[:3] for a in answers] == ["250", "250", "250", "250", "354", "250"]
    await wait_delivered(server, 1)
    assert len(maildir_files(config, "bob")) == 1
    [accepted] = [qe.decode(r) for r in server.journal.read(0) if r.tag == qe.MessageAccepted.TAG]
    assert (accepted.reverse_path, accepted.recipients) == ("alice@example.org", ("bob@localhost",))
    still_quoted = await dialogue(server, b"EHLO client.example\r\n", b'MAIL FROM:<"al ice"@example.org>\r\n')
    assert still_quoted[1].startswith("250")  # a space needs the quotes: kept as written
