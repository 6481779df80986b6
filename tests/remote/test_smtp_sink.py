"""Relaying to Postfix's smtp-sink: started with -8 (no 8BITMIME), an 8-bit message arrives
converted to quoted-printable and decodes to the original body (RFC 6152 3); a message that
needs SMTPUTF8, which smtp-sink does not offer, bounces with 5.6.7 in an RFC 6533 notice."""

from __future__ import annotations

import contextlib
import email
import email.policy
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from vsmtp.config import Config, RelayhostConfig
from vsmtp.queue import events as qe

from ..conftest import maildir_files, sendmail, wait_journal, with_changes
from ..delivery.dovecot import free_port

SINK = "/usr/sbin/smtp-sink"
BODY = "Grüße aus vsmtp, ça va ?\r\n.une ligne qui commence par un point\r\n".encode()
MESSAGE = (
    b"From: a@example.org\r\nTo: b@far.test\r\nSubject: eight bit\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + BODY
)


@contextlib.contextmanager
def smtp_sink(*options: str) -> Iterator[int]:
    """smtp-sink with `options` on a loopback port (its port), as nobody, stopped by its PID."""
    if not Path(SINK).exists():
        pytest.skip("smtp-sink is not installed (Debian package postfix: tools/system-packages, as root)")
    port = free_port()
    sink = subprocess.Popen([SINK, *options, "-u", "nobody", f"127.0.0.1:{port}", "10"])
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            assert sink.poll() is None and time.monotonic() < deadline, "smtp-sink did not start"
            time.sleep(0.05)
        yield port
    finally:
        sink.terminate()
        sink.wait(timeout=10)


def relaying_to(config: Config, port: int) -> Config:
    """Everything from loopback relayed to smtp-sink (which has no TLS: level may)."""
    return with_changes(config, relay={"networks": ("127.0.0.0/8",)}, relayhost=RelayhostConfig(url=f"smtp://127.0.0.1:{port}", tls="may"))


async def test_an_8bit_message_to_a_host_without_8bitmime_arrives_quoted_printable(start_server: Any, config: Config) -> None:
    dump = Path(tempfile.mkdtemp(prefix="vsmtp-sink-", dir="/tmp"))
    dump.chmod(0o777)  # smtp-sink writes as nobody
    try:
        with smtp_sink("-8", "-d", f"{dump}/%H%M%S.") as port:
            running = await start_server(relaying_to(config, port))
            assert await sendmail(running, "a@example.org", ["b@far.test"], MESSAGE) == {}
            records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliverySucceeded.TAG for r in rs), timeout=20)
            assert not any(r.tag == qe.DeliveryFailed.TAG for r in records)
            [file] = list(dump.iterdir())
        received = file.read_bytes().removesuffix(b"\n")  # smtp-sink ends its dump with an empty line
        assert received.isascii()
        assert b"X-Mail-Args: <a@example.org>\n" in received  # no BODY=8BITMIME: it was not offered
        message = email.message_from_bytes(received.split(b"X-Rcpt-Args: <b@far.test>\n", 1)[1], policy=email.policy.default)
        assert message["Content-Transfer-Encoding"] == "quoted-printable"
        assert message.get_payload(decode=True).replace(b"\r\n", b"\n") == BODY.replace(b"\r\n", b"\n")
    finally:
        shutil.rmtree(dump, ignore_errors=True)


async def test_a_message_needing_smtputf8_to_a_host_without_it_bounces_with_a_global_notice(start_server: Any, config: Config) -> None:
    with smtp_sink() as port:  # offers no SMTPUTF8
        relaying = relaying_to(config, port)
        running = await start_server(relaying)

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", running.bound[0].port, timeout=10) as client:
                client.ehlo("client.test")
                message = "From: sender@localhost\r\nTo: 用户@far.test\r\nSubject: hi\r\n\r\nbody\r\n".encode()
                client.sendmail("sender@localhost", ["用户@far.test"], message, mail_options=["SMTPUTF8"])

        await trio.to_thread.run_sync(send)
        records = await wait_journal(running, lambda rs: sum(r.tag == qe.DeliverySucceeded.TAG for r in rs) >= 1, timeout=20)
    [failed] = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliveryFailed)]
    assert failed.status == "5.6.7" and failed.recipient == "用户@far.test"
    [notice_file] = maildir_files(relaying, "sender")
    notice = email.message_from_bytes(notice_file.read_bytes(), policy=email.policy.default)
    kinds = [p.get_content_type() for p in notice.walk()]
    assert "message/global-delivery-status" in kinds and "message/global-headers" in kinds, kinds
    raw = notice_file.read_bytes().decode("utf-8")
    assert "Final-Recipient: utf-8; 用户@far.test" in raw and "Status: 5.6.7" in raw
    accepted = [e for e in map(qe.decode, records) if isinstance(e, qe.MessageAccepted) and not e.reverse_path]
    assert [a.mail_params for a in accepted] == [{"SMTPUTF8": None}]  # the notice itself goes with SMTPUTF8


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
