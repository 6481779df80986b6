"""Signals on a real `vsmtp serve` process: SIGTERM drains, SIGHUP reloads without dropping anyone."""

from __future__ import annotations

import signal
import ssl
import time
from pathlib import Path

import pytest
import trustme

from .clients import BlockingClient
from .daemon import Daemon
from .test_crash import delivered, maildir

CONFIG = """
hostname = "{hostname}"
workers = 2
[[listeners]]
addresses = ["127.0.0.1:0"]
[[listeners.certificates]]
certificate = "cert.pem"
key = "key.pem"
[limits]
shutdown_grace = {grace}
"""


def wait_for_log(daemon: Daemon, text: str, timeout: float = 10, *, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while daemon.log().count(text) < count:  # bounded by the deadline
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout}s:\n{daemon.log()}"
        time.sleep(0.02)


def write_certificate(ca: trustme.CA, workdir: Path, name: str) -> None:
    cert = ca.issue_cert(name)
    cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    cert.private_key_pem.write_to_path(str(workdir / "key.pem"))


def assert_stops_listening(port: int, timeout: float = 5) -> None:
    """Connections are refused within `timeout`: each receiving process closes its listening
    socket when its SIGTERM arrives, so one may still take a connection for an instant."""
    deadline = time.monotonic() + timeout
    while True:  # bounded by the deadline
        try:
            BlockingClient(port).close()
        except ConnectionRefusedError:
            return
        except OSError:
            pass  # accepted by a closing listener, then reset: try again
        assert time.monotonic() < deadline, f"port {port} still accepts connections {timeout}s after SIGTERM"
        time.sleep(0.02)


@pytest.fixture
def daemon(tmp_path: Path, ca: trustme.CA) -> Daemon:
    write_certificate(ca, tmp_path, "mx.test")
    daemon = Daemon(tmp_path, CONFIG.format(hostname="mx.test", grace=10))
    yield daemon  # type: ignore[misc]
    daemon.kill()


@pytest.mark.slow
def test_sigterm_during_a_transaction_lets_it_finish_then_exits(daemon: Daemon) -> None:
    port = daemon.start()
    busy, idle = BlockingClient(port), BlockingClient(port)
    try:
        busy.replies()
        idle.replies()
        assert busy.say(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n", 4)[-1].startswith("354")
        busy.say(b"Subject: caught in the middle\r\n\r\n", 0)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        wait_for_log(daemon, "received SIGTERM: stopping")
        assert idle.replies() == ["421 4.3.2 Service shutting down, closing transmission channel"]
        assert_stops_listening(port)
        queued, goodbye = busy.say(b"still here\r\n.\r\n", 2)
        assert queued.startswith("250 2.0.0 Ok: queued as ")
        assert goodbye.startswith("421 4.3.2")
        assert daemon.proc.wait(15) == 0  # exits by itself, cleanly
    finally:
        busy.close()
        idle.close()
    queue_id = queued.rsplit(" ", 1)[-1]
    daemon.start()  # whether or not it was delivered before the exit, it is after the restart
    deadline = time.monotonic() + 20
    while delivered(daemon.workdir, queue_id) == 0:
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    [path] = maildir(daemon.workdir)
    assert path.read_bytes().endswith(b"Subject: caught in the middle\r\n\r\nstill here\r\n")
    assert "Traceback" not in daemon.log() and "ERROR" not in daemon.log()


@pytest.mark.slow
def test_a_transaction_that_outlasts_the_grace_period_is_cut_with_421(tmp_path: Path, ca: trustme.CA) -> None:
    write_certificate(ca, tmp_path, "mx.test")
    daemon = Daemon(tmp_path, CONFIG.format(hostname="mx.test", grace=0.5))
    try:
        port = daemon.start()
        slow = BlockingClient(port)
        slow.replies()
        slow.say(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n", 4)
        slow.say(b"Subject: never finished\r\n\r\n", 0)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        assert slow.replies() == ["421 4.3.2 Service shutting down, closing transmission channel"]
        assert daemon.proc.wait(15) == 0
        slow.close()
        assert maildir(tmp_path) == []
        assert "never finished" not in "".join(p.name for p in tmp_path.rglob("*"))
    finally:
        daemon.kill()


@pytest.mark.slow
def test_a_second_sigterm_stops_at_once(daemon: Daemon) -> None:
    port = daemon.start()
    slow = BlockingClient(port)
    try:
        slow.replies()
        slow.say(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n", 4)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        wait_for_log(daemon, "received SIGTERM: stopping")
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(15) == 0
        assert time.monotonic() - started < 5  # well inside the 10 s grace
        assert "Traceback" not in daemon.log()
    finally:
        slow.close()


@pytest.mark.slow
def test_sighup_reloads_config_and_certificates_without_dropping_sessions(daemon: Daemon, ca: trustme.CA) -> None:
    port = daemon.start()
    # Both receiving processes have read their certificate before it is rewritten (one still
    # starting would read a new certificate with the old key, and restart).
    wait_for_log(daemon, "vsmtp.net.server: listener mx", count=2)
    old = BlockingClient(port)
    try:
        assert old.replies()[0].startswith("220 mx.test ")
        old.say(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n", 2)

        daemon.write_config(CONFIG.format(hostname="mx2.test", grace=10))
        write_certificate(ca, daemon.workdir, "mx2.test")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for_log(daemon, "configuration reloaded", count=2)  # by each receiving process

        new = BlockingClient(port)
        assert new.replies()[0].startswith("220 mx2.test ")  # new sessions see the new config
        new.say(b"EHLO c\r\n")
        new.say(b"STARTTLS\r\n")
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        new.start_tls(ctx, server_hostname="mx2.test")  # and the new certificate
        new.close()

        # The old session was not dropped: it finishes its transaction under its old config.
        assert old.say(b"RCPT TO:<bob@localhost>\r\nDATA\r\n", 2)[-1].startswith("354")
        assert old.say(b"Subject: across a reload\r\n\r\nhi\r\n.\r\n")[0].startswith("250 2.0.0")
        assert old.say(b"QUIT\r\n")[0].startswith("221")
    finally:
        old.close()

    # A broken config on SIGHUP is refused with a clear log line; the old one stays in force.
    daemon.config.write_text("hostname = 42\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for_log(daemon, "reload failed, keeping the configuration in force")
    assert "hostname" in daemon.log().split("reload failed", 1)[1].splitlines()[0]
    still = BlockingClient(port)
    assert still.replies()[0].startswith("220 mx2.test ")
    still.close()
    assert daemon.proc.poll() is None


@pytest.mark.slow
def test_sighup_reloads_the_rules_and_a_broken_rules_file_keeps_the_old_ones(daemon: Daemon) -> None:
    rules = daemon.workdir / "rules.py"
    rules.write_text("from vsmtp.rules import *\n\n@rule.mail\ndef no_a(ctx):\n    return deny('550 5.7.1 rule one')\n")
    daemon.write_config(CONFIG.format(hostname="mx.test", grace=10).replace("hostname", 'rules = "rules.py"\nhostname', 1))

    def mail_reply() -> str:
        client = BlockingClient(port)
        try:
            client.replies()
            return client.say(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n", 2)[-1]
        finally:
            client.close()

    port = daemon.start()
    assert mail_reply().startswith("550 5.7.1 rule one")
    rules.write_text(rules.read_text().replace("rule one", "rule two"))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for_log(daemon, "configuration reloaded", count=2)
    assert mail_reply().startswith("550 5.7.1 rule two")
    rules.write_text("from vsmtp.rules import *\n\n@rule.mail\ndef broken(ctx)\n    pass\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for_log(daemon, "reload failed, keeping the configuration in force")
    assert "rules.py:4: " in daemon.log().split("reload failed", 1)[1].splitlines()[0]
    assert mail_reply().startswith("550 5.7.1 rule two")  # the rules in force stay
