"""A bounded fuzz run of the wire protocol over a real socket: thousands of sessions of
commands, valid and not, pipelined, split anywhere, with junk, bare line ends, dots and
BDAT chunks, against a real `vsmtp serve`. Whatever is sent, every reply is a well-formed
SMTP reply, the server never logs a crash, and a normal session afterwards is served.

`make test` runs FUZZ_EXAMPLES sessions (2,000 by default); `make fuzz` many more.
"""

from __future__ import annotations

import contextlib
import os
import re
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..daemon import Daemon

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
CONFIG = (
    'workers = 0\n[[listeners]]\naddresses = ["127.0.0.1:0"]\n'
    "[limits]\ncommand_timeout = 3\ndata_timeout = 3\nmax_connections_per_ip = 1000\nsoft_errors = 1000\nhard_errors = 2000\n"
    "[relay]\nnetworks = []\n"
)
REPLY = re.compile(rb"^[2-5]\d\d[ -]")

words = st.sampled_from(
    [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"BDAT", b"RSET", b"NOOP", b"QUIT", b"VRFY", b"EXPN", b"HELP",
     b"STARTTLS", b"AUTH PLAIN", b"AUTH LOGIN", b"mail from:", b"RCPT", b"BDAT 10 LAST", b"\x00", b"\xff\xfe"]
)  # fmt: skip
arguments = st.one_of(
    st.just(b""),
    st.sampled_from([b" <a@example.org>", b" <bob@localhost>", b" <>", b" <\"q u\"@localhost> SMTPUTF8", b" client.example",
                     b" <a@b> SIZE=99999999999", b" 5", b" 0 LAST", b" <bob@localhost> NOTIFY=SUCCESS,FAILURE", b" AGFsaWNlAHg="]),
    st.binary(max_size=40).map(lambda b: b" " + b),
)  # fmt: skip
endings = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""])
command = st.tuples(words, arguments, endings).map(b"".join)
data_block = st.lists(
    st.sampled_from([b"Subject: x\r\n", b"\r\n", b".\r\n", b"..dot\r\n", b"x" * 80 + b"\r\n", b"bare\n", b"\r\n.\r\n"]), max_size=8
).map(b"".join)
session = st.lists(st.one_of(command, command, command, data_block, st.binary(max_size=64)), min_size=1, max_size=20).map(b"".join)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    server = Daemon(workdir, CONFIG)
    server.start()
    yield server
    server.kill()


def exchange(port: int, data: bytes, cuts: list[int]) -> bytes:
    """Send `data` in pieces (cut where `cuts` say), say we are done (the write side shut:
    the server sees the end of input), and read what comes back until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        start = 0
        with contextlib.suppress(OSError):
            for cut in sorted(c % (len(data) + 1) for c in cuts):
                sock.sendall(data[start:cut])
                start = cut
            sock.sendall(data[start:])
            sock.shutdown(socket.SHUT_WR)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=session, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=4))
def test_whatever_a_client_sends_the_server_answers_in_smtp_and_lives(daemon: Daemon, data: bytes, cuts: list[int]) -> None:
    received = exchange(daemon.port, data, cuts)
    assert received.startswith(b"220 "), received[:80]
    for line in received.split(b"\r\n")[:-1]:
        assert REPLY.match(line), (data, line)
    assert daemon.proc is not None and daemon.proc.poll() is None


@pytest.mark.slow
def test_after_the_fuzzing_a_normal_session_is_served_and_nothing_crashed(daemon: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as client:
        assert client.sendmail("a@example.org", ["bob@localhost"], "Subject: after\r\n\r\nstill here\r\n") == {}
    log = daemon.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
