"""Durability: a daemon killed with SIGKILL right after its 250 loses nothing and duplicates nothing."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from vsmtp_journal import Journal

from vsmtp.queue import events as ev

from .daemon import Daemon

CONFIG = """
hostname = "mx.test"
[[listeners]]
addresses = ["127.0.0.1:0"]
[delivery]
enabled = {enabled}
"""


def send(port: int, subject: str, *, then: Callable[[], None] = lambda: None) -> str:
    """Send one message; call `then` the moment the 250 arrives, before QUIT; return the queue id."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("c")
        client.mail("a@example.org")
        client.rcpt("bob@localhost")
        code, text = client.data(f"Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode())
        assert code == 250, text
        then()
        client.close()  # no QUIT: after `then` the server may be gone
    return text.decode().rsplit(" ", 1)[-1]


def delivered(workdir: Path, queue_id: str) -> int:
    """How many delivery.succeeded events the journal holds for queue_id."""
    with Journal(workdir / "var" / "journal", readonly=True) as journal:
        return sum(
            1
            for r in journal.read(0)
            if r.tag == "delivery.succeeded" and ev.decode(r).queue_id == queue_id  # type: ignore[union-attr]
        )


def wait_until_delivered(workdir: Path, queue_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while delivered(workdir, queue_id) == 0:  # bounded by the deadline
        assert time.monotonic() < deadline, f"{queue_id} not delivered within {timeout}s"
        time.sleep(0.05)


def maildir(workdir: Path) -> list[Path]:
    new = workdir / "var" / "mail" / "bob" / "Maildir" / "new"
    return sorted(new.iterdir()) if new.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("delivery_before_kill", [False, True])
def test_sigkill_after_250_then_restart_delivers_exactly_once(tmp_path: Path, delivery_before_kill: bool) -> None:
    daemon = Daemon(tmp_path, CONFIG.format(enabled=str(delivery_before_kill).lower()))
    try:
        port = daemon.start()
        # SIGKILL the moment the 250 arrives: no clean shutdown of anything.
        queue_id = send(port, "survivor", then=daemon.kill)
        if not delivery_before_kill:
            assert maildir(tmp_path) == []  # nothing could have been delivered yet

        daemon.config.write_text(CONFIG.format(enabled="true"))
        daemon.start()
        wait_until_delivered(tmp_path, queue_id)
        [path] = maildir(tmp_path)
        assert path.read_bytes().endswith(b"Subject: survivor\r\n\r\nbody of survivor\r\n")

        # A further crash and restart must not deliver it again.
        daemon.kill()
        port = daemon.start()
        second = send(port, "marker")  # once this is delivered, the restart has done its work
        wait_until_delivered(tmp_path, second)
        assert len(maildir(tmp_path)) == 2
        assert delivered(tmp_path, queue_id) == 1
    finally:
        daemon.kill()
