"""swaks, the administrator's SMTP test tool, against a running server: STARTTLS, implicit TLS,
PIPELINING. (Debian's swaks 20201014 has no CHUNKING support: BDAT is proven with our own raw
client in test_reception.py.)"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import trio

from vsmtp.config import Config, ListenerConfig
from vsmtp.daemon import Running

from ..conftest import maildir_files, port_of, wait_delivered, with_changes

SWAKS = shutil.which("swaks")
pytestmark = pytest.mark.skipif(
    SWAKS is None, reason="swaks is not installed: `make test` installs it with apt-get when it runs as root on Debian"
)


async def swaks(running: Running, *args: str) -> str:
    assert SWAKS is not None
    result = await trio.run_process(
        [SWAKS, "--server", "127.0.0.1", "--port", str(port_of(running)), "--helo", "client.test", "--timeout", "10", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    transcript = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 0, transcript
    return transcript


async def test_swaks_through_starttls(server: Running, config: Config) -> None:
    transcript = await swaks(server, "--from", "a@example.org", "--to", "bob@localhost", "--tls", "--body", "over STARTTLS")
    assert "<-  220 2.0.0 Ready to start TLS" in transcript
    await wait_delivered(server, 1)
    data = maildir_files(config, "bob")[0].read_bytes()
    assert b"with ESMTPS id" in data and b"\r\n\r\nover STARTTLS\r\n" in data


async def test_swaks_through_implicit_tls(start_server: Any, config: Config) -> None:
    listener = ListenerConfig(
        name="submissions", role="submissions", addresses=("127.0.0.1:0",), certificates=config.listeners[0].certificates
    )
    running = await start_server(with_changes(config, listeners=(listener,)))
    await swaks(running, "--from", "a@example.org", "--to", "bob@localhost", "--tls-on-connect", "--body", "implicit")
    await wait_delivered(running, 1)
    data = maildir_files(config, "bob")[0].read_bytes()
    assert b"with ESMTPS id" in data and b"\r\n\r\nimplicit\r\n" in data


async def test_swaks_with_pipelining(server: Running, config: Config) -> None:
    body = "first line\n.a line that starts with a dot\n..two dots\nlast"
    transcript = await swaks(server, "--from", "a@example.org", "--to", "bob@localhost,alice@localhost", "--pipeline", "--body", body)
    # swaks writes MAIL, both RCPTs and DATA as one batch, and only then reads the four replies.
    lines = transcript.splitlines()
    batch = lines.index(" -> MAIL FROM:<a@example.org>")
    written = [" -> MAIL", " -> RCPT", " -> RCPT", " -> DATA"]
    read = ["<-  250 ", "<-  250 ", "<-  250 ", "<-  354 "]
    assert [line[:8] for line in lines[batch : batch + 8]] == written + read
    await wait_delivered(server, 1)
    for user in ("bob", "alice"):
        [path] = maildir_files(config, user)
        assert b"first line\r\n.a line that starts with a dot\r\n..two dots\r\nlast\r\n" in path.read_bytes()
