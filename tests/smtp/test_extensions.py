"""ESMTP extensions in the sans-IO server: CHUNKING, STARTTLS, DSN, and the text line limit."""

from __future__ import annotations

import pytest

from vsmtp.smtp import (
    Bdat,
    BdatLast,
    DataChunk,
    DataEnd,
    Ehlo,
    Extensions,
    Invalid,
    MailFrom,
    RcptTo,
    ServerConnection,
    StartTls,
    State,
    replies,
)

from .helpers import MODES, run

ENVELOPE = b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@localhost>\r\n"


def chunks_of(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataChunk))


# -- CHUNKING (RFC 3030) --------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_bdat_chunks_carry_raw_octets(mode: str) -> None:
    body1, body2 = b"Subject: b\r\n\r\n.no unstuffing\r\n", b"end\r\n"
    script = ENVELOPE + b"BDAT %d\r\n" % len(body1) + body1 + b"BDAT %d LAST\r\n" % len(body2) + body2 + b"QUIT\r\n"
    t = run(script, mode=mode)
    assert chunks_of(t.events) == body1 + body2
    assert Bdat(size=len(body1)) in t.events
    assert BdatLast(size=len(body2), bare_line_endings=False, long_line=False) in t.events
    assert t.replies[-3:] == ["250 2.0.0 Ok: chunk received", "250 2.0.0 Ok: queued as Q1", "221 2.0.0 Bye"]


def test_bdat_chunk_may_contain_anything_that_looks_like_commands() -> None:
    body = b"\r\n.\r\nMAIL FROM:<x@y.z>\r\n"
    t = run(ENVELOPE + b"BDAT %d LAST\r\n" % len(body) + body + b"NOOP\r\n")
    assert chunks_of(t.events) == body
    assert t.codes[-2:] == [250, 250]
    assert [type(e) for e in t.events].count(MailFrom) == 1


def test_bdat_zero_last_ends_the_message() -> None:
    t = run(ENVELOPE + b"BDAT 4\r\nabc\n" + b"BDAT 0 LAST\r\n")
    assert t.events[-1] == BdatLast(size=0, bare_line_endings=True, long_line=False)


def test_bdat_out_of_sequence_is_refused_and_its_chunk_skipped() -> None:
    # The 5 octets after BDAT must not be read as a command, even when refused.
    t = run(b"EHLO c\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    assert t.replies[-2:] == [str(replies.NEED_MAIL), "250 2.0.0 Ok"]
    assert not any(isinstance(e, DataChunk) for e in t.events)


def test_data_and_bdat_do_not_mix() -> None:
    t = run(ENVELOPE + b"BDAT 3\r\nabcDATA\r\n")
    assert t.replies[-1] == str(replies.DATA_AFTER_BDAT)


def test_bdat_needs_ehlo_and_a_size() -> None:
    assert run(b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@localhost>\r\nBDAT 1 LAST\r\nxNOOP\r\n").replies[-2:] == [
        str(replies.NOT_IMPLEMENTED),
        "250 2.0.0 Ok",
    ]
    assert run(ENVELOPE + b"BDAT x\r\n").replies[-1] == "501 5.5.4 Syntax: BDAT size [LAST]"
    assert run(ENVELOPE + b"BDAT 1 NOW\r\n").replies[-1] == "501 5.5.4 Syntax: BDAT size [LAST]"


def test_a_refused_chunk_ends_the_transaction() -> None:
    conn = ServerConnection()
    conn.send(replies.greeting("mx"))
    conn.receive_data(ENVELOPE + b"BDAT 2\r\nab")
    for _ in range(3):
        conn.next_event()
        conn.send(replies.ehlo("mx", "c", []) if conn.state is State.GREETED else replies.OK)
    assert isinstance(conn.next_event(), DataChunk)
    assert isinstance(conn.next_event(), Bdat)
    conn.send(replies.MESSAGE_TOO_BIG)
    assert conn.state is State.READY


# -- STARTTLS (RFC 3207) ---------------------------------------------------------------------


def tls_conn() -> ServerConnection:
    return ServerConnection(extensions=Extensions(starttls=True))


def test_starttls_is_advertised_only_when_available_and_not_active() -> None:
    assert "250-STARTTLS" in run(b"EHLO c\r\n", conn=tls_conn()).replies
    assert not any("STARTTLS" in r for r in run(b"EHLO c\r\n").replies)
    assert run(b"EHLO c\r\nSTARTTLS\r\n").replies[-1] == str(replies.NOT_IMPLEMENTED)


@pytest.mark.parametrize("mode", MODES)
def test_plaintext_pipelined_after_starttls_is_discarded(mode: str) -> None:
    # CVE-2011-0411: the injected MAIL must never be seen as a command.
    conn = tls_conn()
    t = run(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n", mode=mode, conn=conn)
    starttls_at = t.events.index(StartTls())
    assert conn.tls and conn.state is State.GREETED and not conn.esmtp
    # Byte by byte, the injection may arrive after the 220; then it is plaintext in a TLS
    # session, which the transport refuses. What matters here: it never became an event.
    assert not any(isinstance(e, MailFrom) for e in t.events[starttls_at:]) or mode == "bytes"
    if mode != "bytes":
        assert conn.trailing_data == b""


def test_after_starttls_the_session_starts_again_at_ehlo() -> None:
    conn = tls_conn()
    run(b"EHLO c\r\nSTARTTLS\r\n", conn=conn)
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\n")
    event = conn.next_event()
    assert isinstance(event, Invalid) and event.reply == replies.NEED_HELO
    conn.send(event.reply)
    conn.receive_data(b"EHLO c\r\nSTARTTLS\r\n")
    assert isinstance(conn.next_event(), Ehlo)
    reply = conn.send(replies.ehlo("mx", "c", conn.extensions.keywords(tls_active=True)))
    assert b"STARTTLS" not in reply
    event = conn.next_event()
    assert isinstance(event, Invalid) and event.reply == replies.TLS_ALREADY_ACTIVE


def test_starttls_inside_a_transaction_is_refused() -> None:
    t = run(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nSTARTTLS\r\n", conn=tls_conn())
    assert t.replies[-1] == str(replies.STARTTLS_IN_TRANSACTION)


# -- DSN (RFC 3461) -----------------------------------------------------------------------------


def test_dsn_parameters_are_parsed_and_kept() -> None:
    t = run(
        b"EHLO c\r\nMAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2B314\r\n"
        b"RCPT TO:<b@localhost> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40example.org\r\n"
        b"RCPT TO:<c@localhost> NOTIFY=NEVER\r\n"
    )
    assert t.events[1] == MailFrom(reverse_path="a@example.org", params={"RET": "HDRS", "ENVID": "QQ+2B314"})
    assert t.events[2] == RcptTo(forward_path="b@localhost", params={"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;b+40example.org"})
    assert t.codes == [220, 250, 250, 250, 250]
    assert "250-DSN" in run(b"EHLO c\r\n").replies


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ("RET=ALL", "RET is FULL or HDRS"),
        ("ENVID=" + "x" * 101, "ENVID is 1 to 100 characters"),
        ("ENVID=a+zz", "ENVID is not valid xtext"),
        ("ENVID=a=b", "malformed value in 'ENVID=a=b'"),
        ("RET=FULL RET=HDRS", "parameter RET given twice"),
    ],
)
def test_bad_mail_dsn_parameters(params: str, reason: str) -> None:
    reply = run(f"EHLO c\r\nMAIL FROM:<a@example.org> {params}\r\n".encode()).replies[-1]
    assert reply == f"501 5.5.4 Bad parameter: {reason}"


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ("NOTIFY=NEVER,SUCCESS", "NOTIFY is NEVER or a list of SUCCESS, FAILURE, DELAY"),
        ("NOTIFY=SUCCESS,SUCCESS", "NOTIFY is NEVER or a list of SUCCESS, FAILURE, DELAY"),
        ("NOTIFY", "NOTIFY needs a value"),
        ("ORCPT=b@example.org", "ORCPT is addr-type;address with addr-type rfc822 or utf-8"),
        ("ORCPT=x400;b", "ORCPT is addr-type;address with addr-type rfc822 or utf-8"),
    ],
)
def test_bad_rcpt_dsn_parameters(params: str, reason: str) -> None:
    reply = run(f"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@localhost> {params}\r\n".encode()).replies[-1]
    assert reply == f"501 5.5.4 Bad parameter: {reason}"


# -- the text line limit (RFC 5321 4.5.3.1.6) ----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_long_lines_are_flagged_in_data_and_bdat(mode: str) -> None:
    ok, long = b"x" * 998 + b"\r\n", b"x" * 999 + b"\r\n"
    head = ENVELOPE + b"DATA\r\n"
    assert run(head + ok + b".\r\n", mode=mode).events[-1] == DataEnd(bare_line_endings=False, long_line=False)
    assert run(head + ok + long + b".\r\n", mode=mode).events[-1] == DataEnd(bare_line_endings=False, long_line=True)
    t = run(ENVELOPE + b"BDAT 600\r\n" + long[:600] + b"BDAT 401 LAST\r\n" + long[600:], mode=mode)
    assert t.events[-1] == BdatLast(size=401, bare_line_endings=False, long_line=True)


def test_the_line_limit_can_be_lifted() -> None:
    conn = ServerConnection(max_text_line=0)
    t = run(ENVELOPE + b"DATA\r\n" + b"x" * 100_000 + b"\r\n.\r\n", conn=conn)
    assert t.events[-1] == DataEnd(bare_line_endings=False, long_line=False)
