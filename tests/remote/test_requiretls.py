"""REQUIRETLS (RFC 8689): offered and taken only over TLS; a message that asked for it goes
only to a next hop whose certificate verifies and that offers REQUIRETLS in turn, else it
bounces with 5.7.30 (a notice with its headers only, itself sent with REQUIRETLS)."""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
from typing import Any

import trio
import trustme

from vsmtp.config import Config, RelayhostConfig
from vsmtp.queue import events as qe

from ..conftest import maildir_files, port_of, wait_journal, with_changes
from .conftest import ca_file, server_tls

MESSAGE = b"From: alice@localhost\r\nTo: bob@far.test\r\nSubject: secret\r\n\r\nonly over TLS\r\n"


def submit(running: Any, recipient: str) -> tuple[bool, int, int]:
    """(REQUIRETLS offered before TLS, MAIL REQUIRETLS before TLS, the DATA reply after STARTTLS)."""
    with smtplib.SMTP("127.0.0.1", port_of(running), timeout=10) as client:
        client.ehlo("client.test")
        offered_in_clear = client.has_extn("requiretls")
        in_clear = client.mail("alice@localhost", ["REQUIRETLS"])[0]
        client.rset()
        unverified = ssl.create_default_context()
        unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
        client.starttls(context=unverified)
        client.ehlo("client.test")
        assert client.has_extn("requiretls")
        assert client.mail("alice@localhost", ["REQUIRETLS"])[0] == 250
        assert client.rcpt(recipient)[0] == 250
        return offered_in_clear, in_clear, client.data(MESSAGE)[0]


async def test_requiretls_is_offered_and_taken_only_over_tls(
    start_server: Any, sender: Config, start_sink: Any, port: int, ca: trustme.CA
) -> None:
    sink = await start_sink("127.0.0.8", tls=server_tls(ca, "127.0.0.8"), requiretls=True)
    relay = RelayhostConfig(url=f"smtp://127.0.0.8:{port}", tls="may", ca=ca_file(ca, sender))  # REQUIRETLS raises it to verify
    running = await start_server(with_changes(sender, relayhost=relay))
    assert await trio.to_thread.run_sync(submit, running, "bob@far.test") == (False, 555, 250)
    records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliverySucceeded.TAG for r in rs), timeout=15)
    [accepted] = [e for e in map(qe.decode, records) if isinstance(e, qe.MessageAccepted)]
    assert "REQUIRETLS" in accepted.mail_params
    [mail] = sink.mail_commands
    assert mail.endswith(b" REQUIRETLS") and [m.tls for m in sink.received] == [True]


async def test_a_next_hop_without_requiretls_gets_nothing_and_the_sender_hears_why(
    start_server: Any, sender: Config, start_sink: Any, port: int, ca: trustme.CA
) -> None:
    sink = await start_sink("127.0.0.8", tls=server_tls(ca, "127.0.0.8"))  # verified, but offers no REQUIRETLS
    relay = RelayhostConfig(url=f"smtp://127.0.0.8:{port}", ca=ca_file(ca, sender))
    configured = with_changes(sender, relayhost=relay)
    running = await start_server(configured)
    assert (await trio.to_thread.run_sync(submit, running, "bob@far.test"))[2] == 250
    records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliverySucceeded.TAG for r in rs), timeout=15)  # the notice
    [failed] = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliveryFailed)]
    assert failed.status == "5.7.30" and "does not offer REQUIRETLS" in failed.reason and sink.received == []
    [notice] = [e for e in map(qe.decode, records) if isinstance(e, qe.MessageAccepted) and not e.reverse_path]
    assert "REQUIRETLS" in notice.mail_params
    [path] = maildir_files(configured, "alice")
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert "only over TLS" not in path.read_bytes().decode() and "Status: 5.7.30" in path.read_bytes().decode()
    assert [p.get_content_type() for p in parsed.walk()][-1] == "text/rfc822-headers"


async def test_mx_hosts_nothing_authenticates_are_refused(start_server: Any, sender: Config, start_sink: Any, ca: trustme.CA) -> None:
    sink = await start_sink("127.0.0.2", tls=server_tls(ca, "mx1.far.test"), requiretls=True)  # far.test has no MTA-STS policy
    running = await start_server(sender)
    assert (await trio.to_thread.run_sync(submit, running, "bob@far.test"))[2] == 250
    records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliveryFailed.TAG for r in rs), timeout=15)
    [failed] = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliveryFailed)]
    assert failed.status == "5.7.30" and "cannot be authenticated" in failed.reason and sink.sessions == 0
