"""Reception like a production MTA, proven over real sockets: extensions, limits, relay control."""

from __future__ import annotations

import dataclasses
import smtplib
import socket
import struct
from typing import Any

import pytest
import trio

from vsmtp.config import Config, RelayConfig
from vsmtp.daemon import Running
from vsmtp.queue import events as qe
from vsmtp.smtp import replies

from ..clients import Peer
from ..conftest import has_tag, maildir_files, port_of, smtp_client, wait_delivered, wait_journal, with_changes


async def test_size_too_big_is_refused_at_mail(server: Running) -> None:
    def send() -> Any:
        with smtp_client(server) as client:
            client.ehlo("c")
            return client.mail("a@example.org", ["SIZE=999999999999"])

    assert await trio.to_thread.run_sync(send) == (552, b"5.3.4 Message size exceeds fixed limit")


async def test_a_bdat_transfer_lands_in_the_maildir(server: Running, config: Config) -> None:
    peer = await Peer.connect(port_of(server))
    body1, body2 = b"Subject: chunked\r\n\r\n.first chunk\r\n", b"second chunk\r\n"
    await peer.replies(1)
    await peer.send(b"EHLO c\r\n")
    await peer.replies(1)
    await peer.send(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\n"
        + b"BDAT %d\r\n" % len(body1)
        + body1
        + b"BDAT %d LAST\r\n" % len(body2)
        + body2
        + b"QUIT\r\n"
    )
    answers = await peer.replies(5)
    assert [a[:3] for a in answers] == ["250", "250", "250", "250", "221"]
    assert answers[3].startswith("250 2.0.0 Ok: queued as ")
    await peer.aclose()
    await wait_delivered(server, 1)
    [path] = maildir_files(config, "bob")
    assert path.read_bytes().endswith(body1 + body2)  # raw octets: no dot-unstuffing in BDAT


async def test_ehlo_advertises_what_works(server: Running) -> None:
    def ehlo() -> dict[str, str]:
        with smtp_client(server) as client:
            client.ehlo("c")
            return client.esmtp_features

    features = await trio.to_thread.run_sync(ehlo)
    assert set(features) == {"pipelining", "size", "8bitmime", "starttls", "enhancedstatuscodes", "dsn", "smtputf8", "chunking"}
    assert features["size"] == str(50 * 1024 * 1024)


async def test_an_smtputf8_address_is_received_and_delivered(server: Running, config: Config) -> None:
    def send() -> None:
        with smtp_client(server) as client:
            client.sendmail("jörg@exämple.org", ["usér@localhost"], "Subject: ü\r\n\r\nhällo\r\n".encode(), mail_options=["SMTPUTF8"])

    await trio.to_thread.run_sync(send)
    await wait_delivered(server, 1)
    [path] = maildir_files(config, "usér")
    data = path.read_bytes()
    assert data.startswith("Return-Path: <jörg@exämple.org>\r\nDelivered-To: usér@localhost\r\n".encode())
    assert b"with UTF8SMTP id" in data
    assert data.endswith("hällo\r\n".encode())


async def test_utf8_address_without_smtputf8_is_refused(server: Running) -> None:
    def send() -> Any:
        with smtp_client(server) as client:
            client.ehlo("c")
            client.command_encoding = "utf-8"  # make smtplib send UTF-8 without SMTPUTF8
            return client.mail("jörg@example.org")

    code, text = await trio.to_thread.run_sync(send)
    assert (code, text) == (501, b"5.1.7 Bad sender address syntax: non-ASCII local part without SMTPUTF8")


@pytest.mark.parametrize("marker", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r"])
async def test_no_smuggling_variant_sneaks_a_second_message_in(server: Running, marker: bytes) -> None:
    peer = await Peer.connect(port_of(server))
    await peer.replies(1)
    await peer.send(
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nSubject: one\r\n\r\nx"
        + marker
        + b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<carol@localhost>\r\nDATA\r\nSubject: smuggled\r\n\r\ny\r\n.\r\nQUIT\r\n"
    )
    answers = await peer.replies(6)
    assert [a[:3] for a in answers] == ["250", "250", "250", "354", "550", "221"]
    await peer.aclose()
    records = await wait_journal(server, has_tag("session.closed"))
    assert not any(r.tag in ("message.accepted", "session.mail") and b"evil" in repr(r.payload).encode() for r in records)
    assert not any(r.tag == "message.accepted" for r in records)


async def test_bare_line_endings_can_be_normalised(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, smtp={"bare_line_endings": "normalize"}))
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    await peer.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nSubject: n\n\nbare\nlf\r\n.\r\nQUIT\r\n")
    assert [a[:3] for a in await peer.replies(6)] == ["250", "250", "250", "354", "250", "221"]
    await peer.aclose()
    await wait_delivered(running, 1)
    [path] = maildir_files(config, "bob")
    assert path.read_bytes().endswith(b"Subject: n\r\n\r\nbare\r\nlf\r\n")
    running.cancel_scope.cancel()


async def test_a_long_line_is_refused_after_the_message(server: Running) -> None:
    def send() -> tuple[Any, Any]:
        with smtp_client(server) as client:
            client.ehlo("c")
            client.mail("a@example.org")
            client.rcpt("bob@localhost")
            result = client.data(b"Subject: long\r\n\r\n" + b"x" * 1200 + b"\r\n")
            return result, client.noop()

    (code, text), noop = await trio.to_thread.run_sync(send)
    assert (code, text.decode()) == (550, "5.6.0 Error: message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6)")
    assert noop[0] == 250


async def test_relay_is_refused_outside_relay_networks_and_allowed_inside(start_server: Any, config: Config) -> None:
    running = await start_server(dataclasses.replace(config, relay=RelayConfig(networks=("127.0.0.1/32",))))

    def send(source: str) -> dict[str, Any]:
        with smtplib.SMTP("127.0.0.1", port_of(running), timeout=10, source_address=(source, 0)) as client:
            return client.sendmail("a@example.org", ["someone@example.com", "bob@localhost"], "Subject: r\r\n\r\nx\r\n")

    refused = await trio.to_thread.run_sync(send, "127.0.0.2")
    assert refused == {"someone@example.com": (554, b"5.7.1 Relay access denied")}
    assert await trio.to_thread.run_sync(send, "127.0.0.1") == {}  # inside relay networks
    # The relayed recipient is kept in the queue (remote delivery is not built yet).
    await wait_journal(running, has_tag("delivery.deferred"))
    await running.projection.wait_position(running.journal.last_position())
    pending = [m for m in running.projection.state.messages.values() if m.pending()]
    assert [r.address for m in pending for r in m.pending()] == ["someone@example.com"]
    running.cancel_scope.cancel()


async def test_too_many_recipients(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"recipients": 3}))

    def send() -> list[tuple[int, bytes]]:
        with smtp_client(running) as client:
            client.ehlo("c")
            client.mail("a@example.org")
            answers = [client.rcpt(f"u{n}@localhost") for n in range(5)]
            assert client.data(b"Subject: x\r\n\r\nx\r\n")[0] == 250
            return answers

    answers = await trio.to_thread.run_sync(send)
    assert [a[0] for a in answers] == [250, 250, 250, 452, 452]
    assert answers[3] == (452, b"4.5.3 Error: too many recipients")
    await wait_delivered(running, 1)
    running.cancel_scope.cancel()


async def test_too_many_errors_delays_then_closes(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"soft_errors": 2, "hard_errors": 4, "error_delay": 0.2}))
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    start = trio.current_time()
    await peer.send(b"FOO\r\nFOO\r\nFOO\r\nFOO\r\nNOOP\r\n")
    answers = await peer.replies(4)
    elapsed = trio.current_time() - start
    assert answers[:3] == [str(replies.UNKNOWN_COMMAND)] * 3
    assert answers[3] == str(replies.TOO_MANY_ERRORS)
    assert elapsed >= 0.2  # the third error was delayed (a bound the server must respect, not a speed)
    assert await peer.closed()
    await peer.aclose()
    running.cancel_scope.cancel()


async def test_junk_commands_past_the_limit_count_as_errors(start_server: Any, config: Config) -> None:
    """Postfix's smtpd_junk_command_limit: NOOP, RSET, VRFY ... cannot hold a session open."""
    running = await start_server(with_changes(config, limits={"junk_commands": 3, "soft_errors": 10, "hard_errors": 2}))
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    await peer.send(b"NOOP\r\nRSET\r\nVRFY bob\r\nNOOP\r\nHELP\r\n")
    answers = await peer.replies(5)
    assert answers[:2] == [str(replies.OK)] * 2
    assert answers[2] == str(replies.CANNOT_VRFY)
    assert answers[3] == str(replies.OK)  # past the limit: an error counted, not yet the hard limit
    assert answers[4] == str(replies.TOO_MANY_ERRORS)
    assert await peer.closed()
    await peer.aclose()
    running.cancel_scope.cancel()


async def test_a_delivered_message_starts_the_junk_count_again(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"junk_commands": 2, "soft_errors": 10, "hard_errors": 1}))

    def converse() -> list[int]:
        with smtp_client(running) as client:
            codes = [client.noop()[0], client.noop()[0]]
            client.sendmail("a@example.org", ["bob@localhost"], b"Subject: x\r\n\r\nx\r\n")
            codes += [client.noop()[0], client.noop()[0]]
            codes.append(client.noop()[0])  # the third since the message: the hard limit (1 error)
            return codes

    assert await trio.to_thread.run_sync(converse) == [250, 250, 250, 250, 421]
    running.cancel_scope.cancel()


async def test_too_many_connections_from_one_address_while_another_is_served(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"max_connections_per_ip": 2}))
    first = [await Peer.connect(port_of(running), "127.0.0.2") for _ in range(2)]
    for peer in first:
        assert (await peer.replies(1))[0].startswith("220 ")
    extra = await Peer.connect(port_of(running), "127.0.0.2")
    assert await extra.replies(1) == [str(replies.TOO_MANY_CONNECTIONS_FROM_YOU)]
    assert await extra.closed()
    other = await Peer.connect(port_of(running), "127.0.0.3")
    assert (await other.replies(1))[0].startswith("220 ")
    await other.send(b"NOOP\r\n")
    assert await other.replies(1) == ["250 2.0.0 Ok"]
    for peer in [*first, extra, other]:
        await peer.aclose()
    running.cancel_scope.cancel()


async def test_too_many_connections_in_all(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"max_connections": 1}))
    held = await Peer.connect(port_of(running))
    await held.replies(1)
    refused = await Peer.connect(port_of(running), "127.0.0.4")
    assert await refused.replies(1) == [str(replies.TOO_MANY_CONNECTIONS)]
    await held.aclose()
    await refused.aclose()
    running.cancel_scope.cancel()


async def test_an_idle_client_times_out(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"command_timeout": 0.3}))
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    await peer.send(b"EHLO c\r\n")
    await peer.replies(1)
    assert await peer.replies(1) == [str(replies.TIMEOUT)]  # nothing sent for 0.3 s
    assert await peer.closed()
    records = await wait_journal(running, has_tag("session.closed"))
    closed = [qe.decode(r) for r in records if r.tag == "session.closed"]
    assert closed[0].reason == "timeout"  # type: ignore[union-attr]
    await peer.aclose()
    running.cancel_scope.cancel()


async def test_a_session_has_a_maximum_duration(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"session_duration": 0.5}))
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    with trio.fail_after(5):
        while True:  # a busy client: a NOOP every 50 ms, until the server says enough
            await peer.send(b"NOOP\r\n")
            [answer] = await peer.replies(1)
            if answer != "250 2.0.0 Ok":
                break
            await trio.sleep(0.05)
    assert answer == str(replies.SESSION_TOO_LONG)
    await peer.aclose()
    running.cancel_scope.cancel()


async def test_graceful_stop_lets_a_transaction_finish_and_closes_idle_sessions(start_server: Any, config: Config) -> None:
    running = await start_server(config)
    busy, idle = await Peer.connect(port_of(running)), await Peer.connect(port_of(running))
    await busy.replies(1)
    await idle.replies(1)
    await busy.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nSubject: late\r\n\r\n")
    assert [a[:3] for a in await busy.replies(4)] == ["250", "250", "250", "354"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(running.stop, 10.0)
        assert await idle.replies(1) == [str(replies.SHUTTING_DOWN)]  # idle: told at once
        await busy.send(b"the end\r\n.\r\n")
        answers = await busy.replies(2)
    assert answers[0].startswith("250 2.0.0 Ok: queued as ")  # the transaction finished
    assert answers[1] == str(replies.SHUTTING_DOWN)  # and then the session was closed
    with pytest.raises(OSError):
        await Peer.connect(port_of(running))  # no longer listening
    await busy.aclose()
    await idle.aclose()


async def test_clients_that_reset_before_their_session_begins_harm_no_one(server: Running) -> None:
    """A client that connects and resets at once (SO_LINGER 0) is often still waiting to be
    accepted when it is gone: asking for its address then fails. That is its own loss: the
    others are served, and the process goes on (it used to end with the error)."""

    def reset_then_send() -> dict[str, Any]:
        for _ in range(300):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.connect(("127.0.0.1", port_of(server)))
            sock.close()
        with smtplib.SMTP("127.0.0.1", port_of(server), timeout=10) as client:
            return client.sendmail("a@example.org", ["bob@localhost"], b"Subject: after\r\n\r\nstill here\r\n")

    assert await trio.to_thread.run_sync(reset_then_send) == {}
    await wait_delivered(server, 1)
    assert server.smtp is not None
    with trio.fail_after(5):  # and none of them is left counted against the address
        while server.smtp.counts.total():
            await trio.sleep(0.01)
