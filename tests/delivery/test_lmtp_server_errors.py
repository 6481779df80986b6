"""What Dovecot cannot be made to do, from a scripted LMTP peer on loopback: a server that
stops answering after the data. The recipients it answered keep their answer; the others
are deferred (and, since their data went, marked in doubt)."""

from __future__ import annotations

from typing import Any

import trio

from vsmtp.config import Config
from vsmtp.queue import events as qe

from ..conftest import sendmail, wait_journal, with_changes


async def one_answer_then_gone(stream: trio.SocketStream) -> None:
    """Greets, takes LHLO, MAIL, two RCPTs and the data, answers for the first recipient only."""
    async with stream:
        await stream.send_all(b"220 scripted LMTP\r\n")
        buffer = b""
        while b"\r\n.\r\n" not in buffer:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffer += data
            if buffer.startswith(b"LHLO") and b"\r\n" in buffer and b"MAIL" not in buffer:
                await stream.send_all(b"250-scripted\r\n250 PIPELINING\r\n")
            if b"DATA\r\n" in buffer and b"354" not in buffer:
                await stream.send_all(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n")
                buffer += b"354"  # answered
        await stream.send_all(b"250 2.0.0 <a@example.org> saved\r\n")  # and nothing for b


async def test_an_lmtp_server_that_stops_answering_after_the_data(start_server: Any, config: Config, nursery: trio.Nursery) -> None:
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, one_answer_then_gone, [listener])
    configured = with_changes(config, local={"domains": ("example.org",)}, delivery={"mailbox": f"lmtp:127.0.0.1:{port}"})
    running = await start_server(configured)
    assert await sendmail(running, "s@example.org", ["a@example.org", "b@example.org"], b"Subject: x\r\n\r\nbody\r\n") == {}
    records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliveryDeferred.TAG for r in rs), timeout=20)
    events = list(map(qe.decode, records))
    [done] = [e for e in events if isinstance(e, qe.DeliverySucceeded)]
    [deferred] = [e for e in events if isinstance(e, qe.DeliveryDeferred)]
    assert done.recipient == "a@example.org" and "250 2.0.0 <a@example.org> saved" in done.detail
    assert deferred.recipient == "b@example.org" and "no answer after the data" in deferred.reason
    [started] = [e for e in events if isinstance(e, qe.DeliveryStarted)]
    assert started.recipients == ("a@example.org", "b@example.org")  # b is in doubt: its data went
