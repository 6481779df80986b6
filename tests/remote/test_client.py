"""The sans-IO client pieces: replies from bytes, EHLO capabilities, dot-stuffing."""

from __future__ import annotations

import pytest

from vsmtp.smtp import client
from vsmtp.smtp.errors import ProtocolError


def test_replies_come_whole_whatever_the_chunks() -> None:
    reader = client.ReplyReader()
    wire = b"250-mx.example.net hello\r\n250-PIPELINING\r\n250 SIZE 1000\r\n550 5.1.1 no such user\r\n"
    replies = []
    for i in range(len(wire)):  # one byte at a time
        replies += reader.feed(wire[i : i + 1])
    assert [(r.code, r.enhanced, r.lines) for r in replies] == [
        (250, None, ("mx.example.net hello", "PIPELINING", "SIZE 1000")),
        (550, "5.1.1", ("no such user",)),
    ]


def test_a_bare_code_ends_a_reply_and_bad_lines_are_protocol_errors() -> None:
    assert [r.code for r in client.ReplyReader().feed(b"250\r\n")] == [250]
    with pytest.raises(ProtocolError):
        client.ReplyReader().feed(b"hello\r\n")
    with pytest.raises(ProtocolError):
        client.ReplyReader().feed(b"250-a\r\n251 b\r\n")
    with pytest.raises(ProtocolError):
        client.ReplyReader().feed(b"250 " + b"x" * 5000)


def test_capabilities_from_ehlo() -> None:
    [reply] = client.ReplyReader().feed(b"250-mx hi\r\n250-pipelining\r\n250-SIZE 5000\r\n250 STARTTLS\r\n")
    caps = client.Capabilities.from_ehlo(reply)
    assert caps.has("PIPELINING") and caps.has("starttls") and not caps.has("8BITMIME")
    assert caps.size_limit == 5000
    assert client.Capabilities.none().size_limit is None


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),
        (b".first\r\n", b"..first\r\n.\r\n"),
        (b"no final newline", b"no final newline\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
    ],
)
def test_dot_stuffing(message: bytes, wire: bytes) -> None:
    assert client.dot_stuff(message) == wire


def test_commands() -> None:
    assert client.mail_from("", ["SIZE=10"]) == b"MAIL FROM:<> SIZE=10\r\n"
    assert client.rcpt_to("a@b.example") == b"RCPT TO:<a@b.example>\r\n"
