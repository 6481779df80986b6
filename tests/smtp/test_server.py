"""ServerConnection in detail: every input fed whole, one byte at a time, and in halves."""

from __future__ import annotations

import pytest

from vsmtp.smtp import (
    PAUSED,
    ConnectionClosed,
    DataChunk,
    DataEnd,
    Ehlo,
    Extensions,
    Invalid,
    LocalProtocolError,
    MailFrom,
    Quit,
    RcptTo,
    ServerConnection,
    State,
    replies,
)

from .helpers import MODES, run

TRANSACTION = (
    b"EHLO client.test\r\n"
    b"MAIL FROM:<alice@example.org> SIZE=31\r\n"
    b"RCPT TO:<bob@localhost>\r\n"
    b"DATA\r\n"
    b"Subject: hi\r\n\r\n..dotted\r\n.\r\n"
    b"QUIT\r\n"
)


@pytest.mark.parametrize("mode", MODES)
def test_a_whole_transaction(mode: str) -> None:
    t = run(TRANSACTION, mode=mode)
    assert t.events == [
        Ehlo(domain="client.test"),
        MailFrom(reverse_path="alice@example.org", params={"SIZE": "31"}),
        RcptTo(forward_path="bob@localhost", params={}),
        t.events[3],  # Data()
        DataChunk(data=b"Subject: hi\r\n\r\n.dotted\r\n"),
        DataEnd(bare_line_endings=False),
        Quit(),
        ConnectionClosed(),  # after QUIT the connection is over
    ]
    assert t.codes == [220, 250, 250, 250, 354, 250, 221]
    assert t.replies[-2:] == ["250 2.0.0 Ok: queued as Q1", "221 2.0.0 Bye"]


def test_the_modes_agree() -> None:
    whole = run(TRANSACTION, mode="whole")
    assert run(TRANSACTION, mode="bytes").events == whole.events
    assert run(TRANSACTION, mode="bytes").output == whole.output


def test_pipelined_batch_is_answered_in_order_without_waiting() -> None:
    # RFC 2920: the client sends MAIL, RCPTs and DATA at once; each gets its reply, in order.
    batch = b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<x@localhost>\r\nRCPT TO:<bad>\r\nRCPT TO:<y@localhost>\r\nDATA\r\n"
    t = run(batch)
    assert t.codes == [220, 250, 250, 250, 501, 250, 354]
    assert "501 5.1.3" in t.replies[-3]


@pytest.mark.parametrize("mode", MODES)
def test_data_with_trailing_pipelined_commands(mode: str) -> None:
    t = run(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nhi\r\n.\r\nRSET\r\nQUIT\r\n", mode=mode)
    assert t.codes == [220, 250, 250, 250, 354, 250, 250, 221]


def _message(content: bytes, mode: str = "whole") -> tuple[list[object], list[int]]:
    t = run(b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@localhost>\r\nDATA\r\n" + content, mode=mode)
    return t.events[4:], t.codes[5:]  # after the greeting and four replies


@pytest.mark.parametrize("mode", MODES)
def test_dot_unstuffing(mode: str) -> None:
    events, _ = _message(b".\r\n", mode)
    assert events == [DataEnd(bare_line_endings=False)]  # the empty message
    events, _ = _message(b"..\r\n...x\r\na.b\r\n. \r\n.\r\n", mode)
    assert events == [DataChunk(data=b".\r\n..x\r\na.b\r\n \r\n"), DataEnd(bare_line_endings=False)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("marker", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n"])
def test_no_smuggling_variant_ends_the_message(mode: str, marker: bytes) -> None:
    # CVE-2023-51766 and friends: only CRLF.CRLF ends DATA, so the second MAIL is content.
    smuggled = b"text" + marker + b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<v@localhost>\r\nDATA\r\nspoof\r\n.\r\n"
    events, codes = _message(smuggled, mode)
    assert [type(e) for e in events] == [DataChunk, DataEnd]
    assert b"MAIL FROM:<evil@example.org>" in events[0].data  # type: ignore[attr-defined]
    assert events[1] == DataEnd(bare_line_endings=True)
    assert codes == [250]  # one message, one reply


@pytest.mark.parametrize("mode", MODES)
def test_bare_line_endings_are_flagged(mode: str) -> None:
    assert _message(b"a\nb\r\n.\r\n", mode)[0][-1] == DataEnd(bare_line_endings=True)
    assert _message(b"a\rb\r\n.\r\n", mode)[0][-1] == DataEnd(bare_line_endings=True)
    assert _message(b"a\r\nb\r\n.\r\n", mode)[0][-1] == DataEnd(bare_line_endings=False)


def test_data_is_not_cut_into_lines() -> None:
    # One chunk for many lines: the per-message work does not grow with the line count.
    body = b"line\r\n" * 10_000
    events, _ = _message(body + b".\r\n")
    assert events == [DataChunk(data=body), DataEnd(bare_line_endings=False)]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (b"MAIL FROM:<a@example.org>\r\n", "503 5.5.1 Error: send HELO/EHLO first"),
        (b"EHLO c\r\nRCPT TO:<b@localhost>\r\n", "503 5.5.1 Error: need MAIL command"),
        (b"EHLO c\r\nDATA\r\n", "503 5.5.1 Error: need MAIL command"),
        (b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nDATA\r\n", "503 5.5.1 Error: need RCPT command"),
        (b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nMAIL FROM:<a@example.org>\r\n", "503 5.5.1 Error: nested MAIL command"),
        (b"FROB\r\n", "500 5.5.1 Error: command not recognized"),
        (b"EHLO\r\n", "501 5.5.4 Syntax: EHLO hostname"),
        (b"EHLO c\r\nQUIT now\r\n", "501 5.5.4 Syntax: QUIT"),
        (b"EHLO c\r\nMAIL FROM:a@example.org\r\n", "501 5.1.7 Bad sender address syntax: address must be enclosed in <>"),
        (b"EHLO c\r\nMAIL FROM:<a@example.org> FROB=1\r\n", "555 5.5.4 Unsupported option: FROB"),
        (b"HELO c\r\nMAIL FROM:<a@example.org> SIZE=1\r\n", "555 5.5.4 Unsupported option: SIZE"),
        (b"EHLO c\r\nMAIL FROM:<a@example.org> SIZE=99999999999\r\n", "552 5.3.4 Message size exceeds fixed limit"),
        (b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b>\r\n", "501 5.1.3 Bad recipient address syntax: address has no domain"),
        (b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<>\r\n", "501 5.1.3 Bad recipient address syntax: empty address"),
        (b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@localhost> FROB=1\r\n", "555 5.5.4 Unsupported option: FROB"),
        (b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@localhost> NOTIFY=NEVER\r\n", "555 5.5.4 Unsupported option: NOTIFY"),
        (
            b"EHLO c\r\nMAIL FROM:<j\xc3\xb6rg@example.org>\r\n",
            "501 5.1.7 Bad sender address syntax: non-ASCII local part without SMTPUTF8",
        ),
        (b"EHLO c\r\nMAIL FROM:<a@[300.1.1.1]>\r\n", "501 5.1.7 Bad sender address syntax: invalid address literal [300.1.1.1]"),
        (b"EHLO c\xff\r\n", "500 5.5.2 Error: command line is not valid UTF-8"),
        (b"EHLO c\nMAIL FROM:<a@example.org>\r\n", "500 5.5.2 Error: bare CR or LF in command line"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_errors_get_precise_replies(script: bytes, expected: str, mode: str) -> None:
    t = run(script, mode=mode)
    assert t.replies[-1] == expected
    assert isinstance(t.events[-1], Invalid)


@pytest.mark.parametrize(
    ("path", "address"),
    [
        ("<>", ""),
        ("<a@example.org>", "a@example.org"),
        ('<"john smith"@example.org>', '"john smith"@example.org'),
        ('<"a\\"b"@example.org>', '"a\\"b"@example.org'),
        ("<user@[192.0.2.1]>", "user@[192.0.2.1]"),
        ("<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]"),
        ("<@relay.example,@other.example:u@example.org>", "u@example.org"),  # source route ignored
        (" <a@example.org>", "a@example.org"),  # Postfix tolerates the space
    ],
)
def test_reverse_paths(path: str, address: str) -> None:
    t = run(f"EHLO c\r\nMAIL FROM:{path}\r\n".encode())
    assert t.events[-1] == MailFrom(reverse_path=address, params={})


@pytest.mark.parametrize("path", ["<Postmaster>", "<POSTMASTER>", "<postmaster>"])
def test_bare_postmaster_is_a_recipient(path: str) -> None:
    t = run(f"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:{path}\r\n".encode())
    assert t.events[-1] == RcptTo(forward_path="postmaster", params={})


def test_smtputf8_allows_utf8_addresses() -> None:
    t = run("EHLO c\r\nMAIL FROM:<jörg@exämple.org> SMTPUTF8\r\nRCPT TO:<usér@localhost>\r\n".encode())
    assert t.events[1] == MailFrom(reverse_path="jörg@exämple.org", params={"SMTPUTF8": None})
    assert t.events[2] == RcptTo(forward_path="usér@localhost", params={})
    assert t.codes == [220, 250, 250, 250]


@pytest.mark.parametrize("mode", MODES)
def test_over_long_command_line_is_refused_and_the_session_goes_on(mode: str) -> None:
    t = run(b"EHLO " + b"x" * 5000 + b"\r\nNOOP\r\n", mode=mode)
    assert t.replies[-2:] == ["500 5.5.2 Error: line too long", "250 2.0.0 Ok"]


def test_limits_advertised_in_ehlo_follow_configuration() -> None:
    conn = ServerConnection(extensions=Extensions(max_message_size=1000))
    t = run(b"EHLO c\r\nMAIL FROM:<a@example.org> SIZE=1001\r\n", conn=conn)
    assert "250-SIZE 1000" in t.replies
    assert t.replies[-1] == str(replies.SIZE_EXCEEDS_LIMIT)


def test_rset_and_new_ehlo_end_the_transaction() -> None:
    t = run(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRSET\r\nRCPT TO:<b@localhost>\r\n")
    assert t.replies[-1] == str(replies.NEED_MAIL)
    t = run(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nEHLO c\r\nRCPT TO:<b@localhost>\r\n")
    assert t.replies[-1] == str(replies.NEED_MAIL)


def test_a_refused_command_does_not_move_the_state() -> None:
    conn = ServerConnection()
    conn.send(replies.greeting("mx"))
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
    conn.send(replies.ehlo("mx", "c", []) if conn.next_event() else replies.OK)
    assert isinstance(conn.next_event(), MailFrom)
    conn.send(replies.Reply.of(550, "5.7.1", "go away"))
    assert conn.state is State.READY


def test_reply_is_owed_before_the_next_event() -> None:
    conn = ServerConnection()
    conn.send(replies.greeting("mx"))
    conn.receive_data(b"NOOP\r\nNOOP\r\n")
    assert conn.next_event() is not PAUSED
    assert conn.next_event() is PAUSED
    conn.send(replies.OK)
    with pytest.raises(LocalProtocolError):
        conn.send(replies.OK)  # owed nothing: answering twice is our bug


def test_quit_and_421_close() -> None:
    t = run(b"QUIT\r\nNOOP\r\n")
    assert t.codes == [220, 221]
    assert isinstance(t.events[-1], ConnectionClosed)
    conn = ServerConnection()
    conn.send(replies.greeting("mx"))
    conn.receive_data(b"NOOP\r\n")
    conn.next_event()
    conn.send(replies.TIMEOUT)
    assert conn.state is State.CLOSED


def test_peer_closing_mid_line_and_mid_data() -> None:
    t = run(b"EHLO c\r\nNOO", eof=True)
    assert isinstance(t.events[-1], ConnectionClosed)
    t = run(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@localhost>\r\nDATA\r\npartial\r\n", eof=True)
    assert isinstance(t.events[-1], ConnectionClosed)
    assert not any(isinstance(e, DataEnd) for e in t.events)
