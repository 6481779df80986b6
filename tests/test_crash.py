"""Durability: a daemon killed with SIGKILL right after its 250 loses nothing and duplicates nothing."""

from __future__ import annotations

import random
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from vsmtp_journal import Journal

from vsmtp.queue import events as qe
from vsmtp.queue.projection import rebuild

from .daemon import Daemon, run_cli

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
            if r.tag == "delivery.succeeded" and qe.decode(r).queue_id == queue_id  # type: ignore[union-attr]
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

        daemon.write_config(CONFIG.format(enabled="true"))
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


@pytest.mark.slow
def test_sigkill_under_concurrent_load_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    """Many clients send at once; SIGKILL lands at a random moment; after a restart every
    message that got its 250 is delivered exactly once, and no message is delivered twice."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    daemon = Daemon(tmp_path, CONFIG.format(enabled="true"))
    clients, per_client = 12, 200
    acknowledged: set[str] = set()  # tokens whose 250 arrived
    lock = threading.Lock()

    def client(number: int, port: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                for n in range(per_client):
                    token = f"token-{number}-{n}"
                    smtp.sendmail("a@example.org", ["bob@localhost"], f"Subject: {token}\r\n\r\n{token}\r\n".encode())
                    with lock:
                        acknowledged.add(token)
        except (OSError, smtplib.SMTPException):
            pass  # the kill: whatever had no 250 yet may or may not have been kept

    try:
        port = daemon.start()
        threads = [threading.Thread(target=client, args=(i, port)) for i in range(clients)]
        for thread in threads:
            thread.start()
        kill_after = rng.randrange(20, 400)  # a random moment, in the thick of it
        deadline = time.monotonic() + 30
        while len(acknowledged) < kill_after and time.monotonic() < deadline:  # bounded
            time.sleep(0.001)
        daemon.kill()
        for thread in threads:
            thread.join(20)
        assert acknowledged, f"seed {seed}: nothing was acknowledged before the kill"
        assert len(acknowledged) < clients * per_client, f"seed {seed}: the kill came after the end"

        port = daemon.start()
        marker = send(port, "marker")  # delivered after everything recovered at start
        deadline = time.monotonic() + 30
        while True:  # bounded by the deadline
            with Journal(tmp_path / "var" / "journal", readonly=True) as journal:
                pending = rebuild(journal).messages
            if not pending and delivered(tmp_path, marker):
                break
            assert time.monotonic() < deadline, f"seed {seed}: {len(pending)} messages still pending"
            time.sleep(0.05)
    finally:
        daemon.kill()

    copies = Counter(path.read_bytes().rsplit(b"\r\n\r\n", 1)[1].strip().decode() for path in maildir(tmp_path))
    assert [t for t, n in copies.items() if n > 1] == [], f"seed {seed}: delivered twice"
    assert sorted(acknowledged - set(copies)) == [], f"seed {seed}: acknowledged but never delivered"
    verified = run_cli(tmp_path, "journal", "verify")  # and the journal itself came through whole
    assert verified.returncode == 0 and verified.stdout.strip().endswith(": clean"), verified.stdout
