"""End to end over real sockets with smtplib: SMTP in, journal, Maildir out."""

from __future__ import annotations

import smtplib
import socket

import pytest
import trio

from vsmtp.config import Config
from vsmtp.daemon import Running
from vsmtp.queue import events as qe
from vsmtp.queue.projection import rebuild
from vsmtp.smtp import replies

from ..conftest import (
    has_tag,
    maildir_files,
    port_of,
    sendmail,
    smtp_client,
    wait_delivered,
    wait_journal,
    with_changes,
)


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


async def test_the_readme_message_lands_in_the_maildir(server: Running, config: Config) -> None:
    await sendmail(server, "a@example.org", ["bob@localhost"], "Subject: hi\r\n\r\nhello\r\n")
    await wait_delivered(server, 1)
    [path] = maildir_files(config, "bob")
    headers, body = split_message(path.read_bytes())
    assert body == b"hello\r\n"  # byte-exact
    assert headers[0] == b"Return-Path: <a@example.org>"
    assert headers[1] == b"Delivered-To: bob@localhost"
    assert headers[2].startswith(b"Received: from ")
    assert b"by mx.test (vsmtp) with ESMTP id " in b"\n".join(headers)
    assert headers[-1] == b"Subject: hi"


async def test_the_journal_tells_the_whole_story_in_order(server: Running) -> None:
    await sendmail(server, "a@example.org", ["bob@localhost"], "Subject: hi\r\n\r\nhello\r\n")
    await wait_delivered(server, 1)
    tags = [r.tag for r in await wait_journal(server, has_tag("session.closed"))]
    assert tags[:5] == ["session.opened", "session.helo", "session.mail", "recipient.accepted", "message.accepted"]
    assert set(tags[5:]) == {"session.data", "session.closed", "delivery.succeeded"}
    assert tags.index("session.data") < tags.index("session.closed")


async def test_250_means_the_message_is_already_in_the_journal(server: Running) -> None:
    def send_and_look() -> tuple[int, str]:
        with smtp_client(server) as client:
            client.ehlo("c")
            client.mail("a@example.org")
            client.rcpt("bob@localhost")
            code, text = client.data(b"Subject: durable\r\n\r\nx\r\n")
            queue_id = text.decode().rsplit(" ", 1)[-1]
            # No waiting: the record and its blob must be committed already.
            found = [qe.decode(r) for r in server.journal.read(0) if r.tag == "message.accepted"]
            assert [e.queue_id for e in found] == [queue_id]  # type: ignore[union-attr]
            assert b"Subject: durable" in (server.journal.blob(queue_id.encode()) or b"")
            return code, queue_id

    code, _ = await trio.to_thread.run_sync(send_and_look)
    assert code == 250


async def test_several_recipients_each_get_a_copy(server: Running, config: Config) -> None:
    refused = await sendmail(server, "a@example.org", ["bob@localhost", "carol@LOCALHOST", "postmaster"], "Subject: all\r\n\r\nx\r\n")
    assert refused == {}
    await wait_delivered(server, 1)
    assert len(maildir_files(config, "bob")) == 1
    assert len(maildir_files(config, "carol")) == 1
    assert len(maildir_files(config, "postmaster")) == 1


async def test_dot_stuffing_round_trip(server: Running, config: Config) -> None:
    body = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nnot the end\r\n"
    await sendmail(server, "a@example.org", ["bob@localhost"], body)  # smtplib stuffs the dots
    await wait_delivered(server, 1)
    [path] = maildir_files(config, "bob")
    assert path.read_bytes().endswith(b"\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nnot the end\r\n")


async def test_relaying_is_refused(server: Running) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        await sendmail(server, "a@example.org", ["someone@example.com"], "Subject: x\r\n\r\nx\r\n")
    assert info.value.recipients["someone@example.com"] == (554, b"5.7.1 Relay access denied")
    records = await wait_journal(server, has_tag("recipient.rejected"))
    rejected = [qe.decode(r) for r in records if r.tag == "recipient.rejected"]
    assert [e.reply for e in rejected] == ["554 5.7.1 Relay access denied"]  # type: ignore[union-attr]


@pytest.mark.parametrize("user", ["../etc", ".hidden", "a/b"])
async def test_unsafe_local_parts_never_become_paths(server: Running, user: str) -> None:
    quoted = f'"{user}"'  # legal syntax (a quoted local part), so the mailbox policy decides
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        await sendmail(server, "a@example.org", [f"{quoted}@localhost"], "Subject: x\r\n\r\nx\r\n")
    assert next(iter(info.value.recipients.values()))[0] == 550


async def test_known_users_only_without_catch_all(start_server, config: Config) -> None:  # type: ignore[no-untyped-def]
    running = await start_server(with_changes(config, local={"catch_all": False, "users": ("bob",)}))
    await sendmail(running, "a@example.org", ["bob@localhost"], "Subject: x\r\n\r\nx\r\n")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        await sendmail(running, "a@example.org", ["eve@localhost"], "Subject: x\r\n\r\nx\r\n")
    assert info.value.recipients["eve@localhost"][0] == 550
    running.cancel_scope.cancel()


async def test_a_message_over_the_size_limit_is_refused_after_reading_it(start_server, config: Config) -> None:  # type: ignore[no-untyped-def]
    running = await start_server(with_changes(config, limits={"message_size": 1000}))

    def send() -> tuple[int, bytes]:
        with smtp_client(running) as client:
            client.ehlo("c")
            client.mail("a@example.org")  # no SIZE= given: the limit bites at end of data
            client.rcpt("bob@localhost")
            result = client.data(b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n")
            assert client.noop()[0] == 250  # the session is still in step
            return result

    code, text = await trio.to_thread.run_sync(send)
    assert (code, text) == (552, b"5.3.4 Error: message file too big")
    assert not any(r.tag == "message.accepted" for r in running.journal.read(0))
    running.cancel_scope.cancel()


async def raw_conversation(running: Running, data: bytes, replies_expected: int) -> list[str]:
    """Send `data` in one write and read until `replies_expected` final reply lines arrived."""
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(running))
    received = b""
    with trio.fail_after(10):
        async with stream:
            received += await stream.receive_some(4096)  # greeting
            await stream.send_all(data)
            while sum(1 for line in received.split(b"\r\n") if line[3:4] == b" ") < replies_expected + 1:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                received += chunk
    return [line.decode() for line in received.split(b"\r\n") if line[3:4] == b" "]


async def test_a_pipelined_batch_is_answered_in_order(server: Running) -> None:
    batch = (
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nRCPT TO:<x@example.com>\r\n"
        b"RCPT TO:<carol@localhost>\r\nDATA\r\nSubject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n"
    )
    lines = await raw_conversation(server, batch, 7)
    assert [line[:3] for line in lines[1:]] == ["250", "250", "250", "554", "250", "354", "250", "221"]
    await wait_delivered(server, 1)


async def test_bare_lf_in_data_is_refused_and_nothing_is_queued(server: Running) -> None:
    data = b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nSubject: x\n\nbare\n\r\n.\r\nQUIT\r\n"
    lines = await raw_conversation(server, data, 6)
    assert lines[-2] == str(replies.BARE_LINE_ENDING_IN_DATA)
    assert not any(r.tag == "message.accepted" for r in server.journal.read(0))


async def test_smuggled_second_message_stays_inside_the_first(server: Running, config: Config) -> None:
    data = (
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nSubject: one\r\n\r\nx\n.\n"
        b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nSubject: two\r\n\r\ny\r\n.\r\nQUIT\r\n"
    )
    lines = await raw_conversation(server, data, 6)
    assert [line[:3] for line in lines] == ["220", "250", "250", "250", "354", "550", "221"]
    assert not any(r.tag == "message.accepted" for r in server.journal.read(0))


async def test_ipv6_loopback(start_server, config: Config) -> None:  # type: ignore[no-untyped-def]
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback address on this host")
    running = await start_server(with_changes(config, listeners=(dataclasses_replace_listener(config, ("[::1]:0",)),)))

    def send() -> None:
        with smtplib.SMTP("::1", running.bound[0].port, timeout=10) as client:
            client.sendmail("a@example.org", ["bob@localhost"], "Subject: v6\r\n\r\nx\r\n")

    await trio.to_thread.run_sync(send)
    await wait_delivered(running, 1)
    opened = [qe.decode(r) for r in await wait_journal(running, has_tag("session.opened")) if r.tag == "session.opened"]
    assert opened[0].peer_host == "::1"  # type: ignore[union-attr]
    running.cancel_scope.cancel()


def dataclasses_replace_listener(config: Config, addresses: tuple[str, ...]):  # type: ignore[no-untyped-def]
    import dataclasses

    return dataclasses.replace(config.listeners[0], addresses=addresses)


async def test_rebuilding_from_position_zero_equals_the_live_projection(server: Running) -> None:
    await sendmail(server, "a@example.org", ["bob@localhost", "carol@localhost"], "Subject: 1\r\n\r\nx\r\n")
    await sendmail(server, "", ["bob@localhost"], "Subject: 2\r\n\r\nx\r\n")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await sendmail(server, "a@example.org", ["x@example.com"], "Subject: 3\r\n\r\nx\r\n")
    await wait_delivered(server, 2)
    for _ in range(100):  # bounded: until no record lands between the two reads (late session.closed, ...)
        await server.projection.wait_position(server.journal.last_position())
        rebuilt = rebuild(server.journal)
        if rebuilt.position == server.projection.state.position:
            break
        await trio.sleep(0.02)
    assert server.projection.state.completed == 2
    assert rebuilt.position == server.projection.state.position
    assert rebuilt == server.projection.state


async def test_rebuild_equals_live_with_messages_still_pending(start_server, config: Config) -> None:  # type: ignore[no-untyped-def]
    running = await start_server(with_changes(config, delivery={"enabled": False}))
    await sendmail(running, "a@example.org", ["bob@localhost"], "Subject: 1\r\n\r\nx\r\n")
    await running.projection.wait_position(running.journal.last_position())
    assert len(running.projection.state.messages) == 1
    assert rebuild(running.journal) == running.projection.state
    running.cancel_scope.cancel()


async def test_the_scheduler_forgets_finished_messages(server: Running) -> None:
    for n in range(3):
        await sendmail(server, "a@example.org", ["bob@localhost", "carol@localhost"], f"Subject: {n}\r\n\r\nx\r\n")
    await wait_delivered(server, 3)
    assert server.scheduler is not None
    with trio.fail_after(5):  # it lets go once it has seen the outcomes folded in
        while server.scheduler.in_flight:
            await trio.sleep(0.01)
