"""A session that has ended is freed at once, not left in a reference cycle for the garbage
collector: with the thresholds a receiving process runs with (workers.settle_heap), a cycle
outlives its connection until a rare full collection, and everything it holds with it (the
last message, buffers, OpenSSL's state). With a connection per message of 100 KiB that was
27 MiB more in each receiving process."""

from __future__ import annotations

import gc
import smtplib
from typing import Any

import trio
import trustme

from vsmtp.config import Config
from vsmtp.queue import events as qe

from ..conftest import port_of, wait_journal
from .test_tls import client_context

SESSION_PARTS = {"Session", "Wire", "ServerConnection", "Message", "Context", "SSLStream", "SSLObject", "SocketStream"}


async def test_an_ended_session_leaves_no_reference_cycle(start_server: Any, config: Config, ca: trustme.CA) -> None:
    running = await start_server(config)
    port = port_of(running)
    body = b"Subject: cycles\r\n\r\n" + (b"x" * 78 + b"\r\n") * 1280

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port) as plain:
            plain.sendmail("a@example.org", ["bob@localhost"], body)
        with smtplib.SMTP("127.0.0.1", port) as secured:
            secured.starttls(context=client_context(ca))
            secured.sendmail("a@example.org", ["bob@localhost"], body)

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable is kept in gc.garbage, to be read
    try:
        await trio.to_thread.run_sync(send)
        await wait_journal(running, lambda records: sum(r.tag == qe.SessionClosed.TAG for r in records) >= 2)
        await trio.sleep(0.1)  # the sessions' last steps after their session.closed
        gc.collect()
        left = sorted({type(o).__name__ for o in gc.garbage} & SESSION_PARTS)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not left, f"an ended session is kept alive by a reference cycle: {left}"
