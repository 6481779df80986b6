"""Delivery into a real Dovecot (tests/delivery/dovecot.py): by LMTP, several recipients in
one transaction, read back over IMAP byte for byte; a recipient over quota bounced (552) or
deferred (452) alone, an unknown one bounced (550 at RCPT); over the unix socket with the
connection kept; and through Dovecot's own delivery agent by the pipe transport."""

from __future__ import annotations

import email
import imaplib
import time
from typing import Any

import trio

from vsmtp.config import Config, PipeConfig
from vsmtp.queue import events as qe
from vsmtp.queue import inspect as queue_inspect

from ..conftest import sendmail, wait_journal, with_changes
from . import dovecot

# Bigger than carol's quota (1 KiB), 8-bit, with a line that starts with a dot.
MESSAGE = (
    "From: sender@example.org\r\nTo: team@example.org\r\nSubject: to Dovecot\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + "Grüße aus vsmtp.\r\n.a line with a dot\r\n"
    + "padding to exceed a small quota\r\n" * 60
).encode()


def imap_messages(server: dovecot.Dovecot, user: str) -> list[bytes]:
    """Every message in the user's INBOX, as Dovecot returns it (RFC822)."""
    imap = imaplib.IMAP4("127.0.0.1", server.imap)
    try:
        imap.login(user, dovecot.PASSWORD)
        imap.select("INBOX", readonly=True)
        _, [numbers] = imap.search(None, "ALL")
        found = []
        for number in numbers.split():
            _, data = imap.fetch(number, "(RFC822)")
            found.append(data[0][1])  # type: ignore[index]
        return found
    finally:
        imap.logout()


def lmtp_config(config: Config, server: dovecot.Dovecot) -> Config:
    return with_changes(config, local={"domains": ("example.org",)}, delivery={"mailbox": f"lmtp:127.0.0.1:{server.lmtp}"})


def outcome(records: list[Any], cls: type[qe.JournalEvent], recipient: str) -> Any:
    return next(e for e in map(qe.decode, records) if isinstance(e, cls) and getattr(e, "recipient", "") == recipient)


async def test_lmtp_delivers_every_recipient_in_one_transaction_and_bounces_the_one_over_quota(start_server: Any, config: Config) -> None:
    users = {"alice": "", "bob": "", "sender": "", "carol": "userdb_quota_rule=*:storage=1K"}
    with dovecot.running(users) as server:
        running = await start_server(lmtp_config(config, server))
        rcpts = ["alice@example.org", "bob@example.org", "carol@example.org"]
        assert await sendmail(running, "sender@example.org", [*rcpts, "nobody-here@example.org"], MESSAGE) == {}
        records = await wait_journal(running, has_bounce_delivered, timeout=30)
        [started] = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliveryStarted) and "carol@example.org" in e.recipients]
        assert sorted(started.recipients) == rcpts  # one transaction for the three
        for user in ("alice", "bob"):
            done = outcome(records, qe.DeliverySucceeded, f"{user}@example.org")
            assert done.transport == "lmtp" and " 250 2.0.0 " in done.detail
        failed = outcome(records, qe.DeliveryFailed, "carol@example.org")
        assert (failed.transport, failed.code, failed.status, failed.stage) == ("lmtp", 552, "5.2.2", "message"), failed
        unknown = outcome(records, qe.DeliveryFailed, "nobody-here@example.org")  # Dovecot refuses it at RCPT
        assert (unknown.code, unknown.status, unknown.stage) == (550, "5.1.1", "rcpt"), unknown
        accepted = next(e for e in map(qe.decode, records) if isinstance(e, qe.MessageAccepted) and e.reverse_path)
        stored = running.journal.blob(accepted.blob)
        assert stored is not None
        for user in ("alice", "bob"):
            [got] = await trio.to_thread.run_sync(imap_messages, server, user)
            # Byte for byte what vsmtp queued (its Received line first), after what the final
            # delivery adds (RFC 5321 4.4: Return-Path; Dovecot may add Delivered-To).
            head, _, rest = got.partition(b"Received: ")
            assert b"Received: " + rest == stored
            assert head.startswith(b"Return-Path: <sender@example.org>\r\n"), head
            assert all(line.startswith(b"Delivered-To: ") for line in head.split(b"\r\n")[1:-1]), head
        assert await trio.to_thread.run_sync(imap_messages, server, "carol") == []
        [bounce] = await trio.to_thread.run_sync(imap_messages, server, "sender")
        report = email.message_from_bytes(bounce)
        status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
        text = status.as_string()
        assert "Final-Recipient: rfc822; carol@example.org" in text and "Status: 5.2.2" in text
        assert "Final-Recipient: rfc822; nobody-here@example.org" in text and "Status: 5.1.1" in text
        assert "Diagnostic-Code: smtp; 552 5.2.2" in text and "Remote-MTA: dns; [127.0.0.1]:" in text


def has_bounce_delivered(records: list[Any]) -> bool:
    """The message's bounce, to sender@, delivered too."""
    bounced = [e for e in map(qe.decode, records) if isinstance(e, qe.MessageBounced) and e.bounce_id]
    return bool(bounced) and any(
        isinstance(e, qe.DeliverySucceeded) and e.queue_id == bounced[0].bounce_id for e in map(qe.decode, records)
    )


async def test_lmtp_defers_a_recipient_over_quota_when_dovecot_says_452(start_server: Any, config: Config) -> None:
    users = {"alice": "", "carol": "userdb_quota_rule=*:storage=1K"}
    with dovecot.running(users, tempfail=True) as server:
        running = await start_server(lmtp_config(config, server))
        assert await sendmail(running, "sender@example.org", ["alice@example.org", "carol@example.org"], MESSAGE) == {}
        records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliveryDeferred.TAG for r in rs), timeout=30)
        deferred = outcome(records, qe.DeliveryDeferred, "carol@example.org")
        assert (deferred.code, deferred.status) == (452, "4.2.2") and "Quota" in deferred.reason, deferred
        await wait_journal(running, lambda rs: any(r.tag == qe.DeliverySucceeded.TAG for r in rs), timeout=30)
        assert len(await trio.to_thread.run_sync(imap_messages, server, "alice")) == 1
        [message] = running.projection.state.messages.values()
        assert [(r.address, r.status) for r in message.recipients] == [("alice@example.org", "delivered"), ("carol@example.org", "pending")]


async def test_lmtp_over_a_unix_socket_keeps_its_connection_for_the_next_message(start_server: Any, config: Config) -> None:
    with dovecot.running({"alice": ""}) as server:
        configured = with_changes(
            config, local={"domains": ("example.org",)}, delivery={"mailbox": f"lmtp:unix:{server.socket}", "connection_idle": 30.0}
        )
        running = await start_server(configured)
        for n in (1, 2):
            assert await sendmail(running, "sender@example.org", ["alice@example.org"], MESSAGE) == {}
            await wait_journal(running, lambda rs, n=n: sum(r.tag == qe.DeliverySucceeded.TAG for r in rs) == n, timeout=30)
        assert len(await trio.to_thread.run_sync(imap_messages, server, "alice")) == 2
        assert server.log().count("lmtp(") and server.log().count("Connect from local") == 1  # one connection for both


async def test_lmtp_to_a_server_that_is_down_defers(start_server: Any, config: Config) -> None:
    port = dovecot.free_port()  # nobody listens
    running = await start_server(with_changes(config, local={"domains": ("example.org",)}, delivery={"mailbox": f"lmtp:127.0.0.1:{port}"}))
    assert await sendmail(running, "sender@example.org", ["alice@example.org"], MESSAGE) == {}
    records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliveryDeferred.TAG for r in rs), timeout=30)
    deferred = outcome(records, qe.DeliveryDeferred, "alice@example.org")
    assert deferred.transport == "lmtp" and deferred.stage == "connect" and "cannot connect" in deferred.reason
    assert (deferred.route, deferred.routed_by) == (f"lmtp:[127.0.0.1]:{port}", "mailbox")
    # What `vsmtp queue show` prints: the route of its last attempt.
    message = queue_inspect.current(running.journal).messages[deferred.queue_id]
    [shown] = queue_inspect.details(running.journal, message, now=time.time())["recipients"]
    assert (shown["route"], shown["routed_by"], shown["status"]) == (f"lmtp:[127.0.0.1]:{port}", "mailbox", "pending")


async def test_pipe_delivers_through_dovecot_lda(start_server: Any, config: Config) -> None:
    with dovecot.running({"alice": ""}) as server:
        lda = PipeConfig(command=(dovecot.LDA, "-c", str(server.config), "-f", "${sender}", "-d", "${user}"))
        running = await start_server(
            with_changes(config, local={"domains": ("example.org",)}, delivery={"mailboxes": {"alice": "pipe:lda"}, "pipe": {"lda": lda}})
        )
        assert await sendmail(running, "sender@example.org", ["alice@example.org"], MESSAGE) == {}
        records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliverySucceeded.TAG for r in rs), timeout=30)
        assert outcome(records, qe.DeliverySucceeded, "alice@example.org").transport == "pipe"
        [got] = await trio.to_thread.run_sync(imap_messages, server, "alice")
        parsed = email.message_from_bytes(got)
        assert parsed["Subject"] == "to Dovecot" and parsed["Return-Path"] == "<sender@example.org>"
        assert "Grüße aus vsmtp.\n.a line with a dot\n" in parsed.get_payload(decode=True).decode("utf-8").replace("\r\n", "\n")
