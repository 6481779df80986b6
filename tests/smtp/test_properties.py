"""Property tests: on any bytes the server raises nothing of its own making and stays in TRANSITIONS."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vsmtp.smtp import (
    NEED_DATA,
    TRANSITIONS,
    ConnectionClosed,
    DataChunk,
    Extensions,
    ServerConnection,
    State,
    replies,
)
from vsmtp.smtp import events as ev

from .helpers import default_reply

# Fragments that reach deep states quickly, mixed with arbitrary bytes.
FRAGMENTS = [
    b"EHLO c\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:<a@example.org>\r\n",
    b"MAIL FROM:<>\r\n",
    b"RCPT TO:<b@localhost>\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
    b"NOOP\r\n",
    b"\r\n.\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"x" * 3000,
    b"MAIL FROM:<a@[IPv6:::1]> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n",
    b"VRFY x\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT x\r\n",
    b"STARTTLS\r\n",
    b"RCPT TO:<b@localhost> NOTIFY=SUCCESS ORCPT=rfc822;b@localhost\r\n",
    b"MAIL FROM:<> RET=FULL ENVID=x\r\n",
]
chunks = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=64)), max_size=40)
replies_positive = st.lists(st.booleans(), min_size=64, max_size=64)


@settings(max_examples=300, deadline=None)
@given(chunks=chunks, positive=replies_positive)
def test_any_input_keeps_the_machine_in_its_table(chunks: list[bytes], positive: list[bool]) -> None:
    conn = ServerConnection(extensions=Extensions(starttls=True), max_text_line=50)
    conn.send(replies.greeting("mx"))
    answered = 0
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            before = conn.state
            event = conn.next_event()
            if event is NEED_DATA or isinstance(event, ConnectionClosed):
                break
            if isinstance(event, DataChunk):
                assert conn.state in (State.DATA, State.RCPT, State.BDAT)  # DATA, or a BDAT chunk
                continue
            assert type(event) in TRANSITIONS[before], f"{event!r} not legal in {before}"
            reply = default_reply(conn, event)
            if not positive[answered % len(positive)] and not isinstance(event, ev.Quit):
                reply = replies.Reply.of(550, "5.0.0", "no")
            answered += 1
            conn.send(reply)
            assert conn.state in TRANSITIONS
            assert conn.state in TRANSITIONS[before].get(type(event), ()) or conn.state is State.CLOSED
        if conn.state is State.CLOSED:
            break
