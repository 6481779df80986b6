"""The sans-IO client: replies from bytes, EHLO capabilities, dot-stuffing, and the state machine."""

from __future__ import annotations

import pytest

from vsmtp.smtp import client
from vsmtp.smtp.errors import LocalProtocolError, ProtocolError


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


def greeted(ehlo: bytes = b"250-mx hi\r\n250-PIPELINING\r\n250 STARTTLS\r\n") -> client.ClientConnection:
    conn = client.ClientConnection()
    [answer] = conn.receive_data(b"220 mx ESMTP\r\n")
    assert answer.command == "GREETING" and conn.state is client.State.HELLO
    assert conn.ehlo("me.example") == b"EHLO me.example\r\n"
    conn.receive_data(ehlo)
    assert conn.state is client.State.READY
    return conn


def test_a_pipelined_transaction_pairs_each_reply_with_its_command() -> None:
    conn = greeted()
    wire = conn.mail("", ["SIZE=10"]) + conn.rcpt("a@b.example") + conn.rcpt("c@b.example") + conn.data()
    assert wire == b"MAIL FROM:<> SIZE=10\r\nRCPT TO:<a@b.example>\r\nRCPT TO:<c@b.example>\r\nDATA\r\n"
    answers = conn.receive_data(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
    assert [(a.command, a.reply.code) for a in answers] == [("MAIL", 250), ("RCPT", 250), ("RCPT", 550), ("DATA", 354)]
    assert conn.state is client.State.BODY
    with pytest.raises(LocalProtocolError):
        conn.rset()  # the server waits for the message
    assert conn.message(b".dot\r\n") == b"..dot\r\n.\r\n"
    conn.receive_data(b"250 queued\r\n")
    assert conn.state is client.State.READY and conn.awaiting == 0


def test_out_of_sequence_commands_are_our_bugs() -> None:
    conn = client.ClientConnection()
    with pytest.raises(LocalProtocolError):
        conn.ehlo("x")  # before the greeting
    conn = greeted()
    for wrong in (conn.data, lambda: conn.rcpt("a@b"), lambda: conn.message(b"x"), conn.tls_started):
        with pytest.raises(LocalProtocolError):
            wrong()
    with pytest.raises(LocalProtocolError):
        conn.auth_plain("u", "p")  # credentials never go in clear
    conn.mail("a@b")
    with pytest.raises(LocalProtocolError):
        conn.data()  # no recipient yet


def test_without_pipelining_one_command_at_a_time() -> None:
    conn = greeted(b"250 mx hi\r\n")
    conn.mail("a@b")
    with pytest.raises(LocalProtocolError, match="PIPELINING"):
        conn.rcpt("c@d")
    conn.receive_data(b"250 ok\r\n")
    conn.rcpt("c@d")


def test_data_ends_a_pipelined_group() -> None:
    conn = greeted()
    conn.mail("a@b")
    conn.rcpt("c@d")
    conn.data()
    with pytest.raises(LocalProtocolError, match="RFC 2920"):
        conn.rset()


def test_a_refused_data_or_mail_ends_the_transaction() -> None:
    conn = greeted()
    conn.mail("a@b")
    conn.rcpt("c@d")
    conn.data()
    conn.receive_data(b"451 later\r\n550 no\r\n554 no valid recipients\r\n")
    assert conn.state is client.State.READY
    conn2 = greeted(b"250 mx hi\r\n")
    conn2.mail("a@b")
    conn2.receive_data(b"553 bad sender\r\n")
    assert conn2.state is client.State.READY


def test_starttls_discards_what_came_with_the_220_and_forgets_the_capabilities() -> None:
    conn = greeted()
    conn.starttls()
    # A man in the middle (or a broken server) adds a reply before TLS: it must not count.
    assert [a.command for a in conn.receive_data(b"220 go ahead\r\n250 injected\r\n")] == ["STARTTLS"]
    assert conn.state is client.State.TLS
    assert conn.receive_data(b"250 more injected\r\n") == []
    conn.tls_started()
    assert conn.tls and conn.state is client.State.HELLO and not conn.capabilities.has("PIPELINING")
    conn.ehlo("me.example")
    [answer] = conn.receive_data(b"250-mx hi\r\n250 AUTH PLAIN\r\n")
    assert answer.command == "EHLO"
    with pytest.raises(LocalProtocolError):
        conn.starttls()  # already on
    assert conn.auth_plain("u", "p") == b"AUTH PLAIN AHUAcA==\r\n"
    conn.receive_data(b"235 2.7.0 ok\r\n")
    assert conn.authenticated


def test_unasked_replies_and_421() -> None:
    conn = greeted()
    with pytest.raises(ProtocolError, match="nothing asked for"):
        conn.receive_data(b"250 surprise\r\n")
    conn = greeted()
    conn.mail("a@b")
    conn.receive_data(b"421 4.3.2 shutting down\r\n")
    assert conn.state is client.State.CLOSED and conn.awaiting == 0


def test_mail_params_follow_what_the_server_offers() -> None:
    caps = client.Capabilities({"SIZE": "100", "8BITMIME": ""})
    assert client.mail_params(caps, size=10, eight_bit=True, smtputf8=False) == ["SIZE=10", "BODY=8BITMIME"]
    for kwargs, why in (
        ({"size": 101, "eight_bit": False, "smtputf8": False}, "limit 100"),
        ({"size": 1, "eight_bit": False, "smtputf8": True}, "SMTPUTF8"),
    ):
        with pytest.raises(client.Unsupported, match=why):
            client.mail_params(caps, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(client.Unsupported, match="8BITMIME"):
        client.mail_params(client.Capabilities.none(), size=1, eight_bit=True, smtputf8=False)
