"""LmtpConnection (smtp/lmtp.py), sans-IO: LHLO, and one reply per accepted recipient after
the data (RFC 2033 4.2)."""

from __future__ import annotations

import pytest

from vsmtp.smtp.client import State
from vsmtp.smtp.errors import LocalProtocolError, ProtocolError
from vsmtp.smtp.lmtp import LmtpConnection


def ready() -> LmtpConnection:
    conn = LmtpConnection()
    conn.receive_data(b"220 lmtp ready\r\n")
    assert conn.lhlo("mx.test") == b"LHLO mx.test\r\n"
    conn.receive_data(b"250-lmtp\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    return conn


def test_lhlo_not_ehlo() -> None:
    conn = LmtpConnection()
    conn.receive_data(b"220 lmtp ready\r\n")
    with pytest.raises(LocalProtocolError, match="LHLO"):
        conn.ehlo("mx.test")
    conn.lhlo("mx.test")
    [answer] = conn.receive_data(b"250-lmtp\r\n250 PIPELINING\r\n")
    assert answer.command == "LHLO" and conn.state is State.READY and conn.capabilities.has("PIPELINING")


def test_one_reply_per_accepted_recipient_after_the_data() -> None:
    conn = ready()
    sent = conn.mail("s@x") + conn.rcpt("a@x") + conn.rcpt("b@x") + conn.rcpt("c@x") + conn.data()
    assert sent.count(b"\r\n") == 5
    answers = conn.receive_data(b"250 ok\r\n250 ok\r\n550 5.1.1 no c\r\n250 ok\r\n354 go\r\n")
    assert [a.command for a in answers] == ["MAIL", "RCPT", "RCPT", "RCPT", "DATA"] and conn.recipients_accepted == 2
    conn.message(b"Subject: x\r\n\r\nbody\r\n")
    assert conn.awaiting == 2
    [first] = conn.receive_data(b"250 2.0.0 <a@x> Saved\r\n")
    assert first.command == "MESSAGE" and conn.awaiting == 1
    with pytest.raises(LocalProtocolError):  # not before the last reply
        conn.mail("s@x")
    [second] = conn.receive_data(b"552 5.2.2 <b@x> Quota exceeded\r\n")
    assert second.reply.code == 552 and second.reply.enhanced == "5.2.2" and conn.awaiting == 0
    assert conn.state is State.READY
    conn.mail("s@x")  # the next transaction on the same connection


def test_a_reply_too_many_is_the_servers_error() -> None:
    conn = ready()
    conn.mail("s@x") + conn.rcpt("a@x") + conn.data()
    conn.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    conn.message(b"x\r\n")
    with pytest.raises(ProtocolError, match="nothing asked for"):
        conn.receive_data(b"250 ok\r\n250 ok again\r\n")
