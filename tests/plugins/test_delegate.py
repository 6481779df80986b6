"""smtp-delegate: a round trip through a real SMTP content filter on loopback (a receiving
SMTP server that stamps each message and sends it back with smtplib), and no loop."""

from __future__ import annotations

import dataclasses
import smtplib
from typing import Any

import pytest
import trio

from vsmtp.config import Config, ListenerConfig
from vsmtp.errors import PluginError
from vsmtp.plugins import PluginManager

from ..conftest import maildir_files, port_of, wait_delivered
from ..rules.test_stages import session
from ..smtpsink import Sink


async def content_filter(sink: Sink, return_port: int) -> None:
    """The filter's other half: every message it took goes back, stamped, to vsmtp's return listener."""
    sent = 0
    while True:
        while sent < len(sink.received):
            message = sink.received[sent]
            stamped = b"X-Filtered: clean\r\n" + message.data

            def reinject(m: Any = message, data: bytes = stamped) -> None:
                with smtplib.SMTP("127.0.0.1", return_port, timeout=10) as client:
                    client.sendmail(m.reverse_path, m.recipients, data)

            await trio.to_thread.run_sync(reinject)
            sent += 1
        await trio.sleep(0.02)


async def test_a_round_trip_through_a_content_filter(start_server: Any, config: Config, nursery: trio.Nursery) -> None:
    sink = Sink(host="127.0.0.1")
    filter_port = await nursery.start(sink.serve)
    [mx] = config.listeners
    changed = dataclasses.replace(
        config,
        listeners=(mx, ListenerConfig(name="filter-return", addresses=("127.0.0.1:0",), certificates=mx.certificates)),
        plugins=("smtp-delegate",),
        plugin={"smtp-delegate": {"filter": f"127.0.0.1:{filter_port}", "return_listener": "filter-return"}},
    )
    running = await start_server(changed)
    [return_port] = [b.port for b in running.bound if b.listener == "filter-return"]
    nursery.start_soon(content_filter, sink, return_port)
    await session(running, lambda c: c.sendmail("a@example.org", ["bob@localhost", "carol@localhost"], "Subject: scan me\r\n\r\nx\r\n"))
    await wait_delivered(running, 2)  # the message (to the filter), then what came back (to the mailboxes)
    await trio.sleep(0.3)  # a loop would show by now: the message would go to the filter again
    assert len(sink.received) == 1 and sink.received[0].recipients == ["bob@localhost", "carol@localhost"]
    for user in ("bob", "carol"):
        [delivered] = maildir_files(config, user)
        assert b"X-Filtered: clean\r\n" in delivered.read_bytes()
    records = list(running.journal.read(0))
    to_filter = [r.payload for r in records if r.tag == "delivery.succeeded" and r.payload["transport"] == "smtp"]
    assert {p["recipient"] for p in to_filter} == {"bob@localhost", "carol@localhost"}
    assert all("127.0.0.1[127.0.0.1]" in p["detail"] for p in to_filter)
    routes = [r.payload["args"] for r in records if r.tag == "rule.action" and r.payload["action"] == "set_route"]
    assert sorted(routes) == [[a, f"smtp:[127.0.0.1]:{filter_port}"] for a in ("bob@localhost", "carol@localhost")]
    assert port_of(running) != return_port
    running.cancel_scope.cancel()


def test_a_bad_delegate_section_names_its_key(config: Config) -> None:
    for section, message in (
        ({"filter": "127.0.0.1"}, "filter: expected"),
        ({"filter": "127.0.0.1:x", "return_listener": "r"}, "is not host:port"),
        ({"filter": "127.0.0.1:10025"}, "return_listener: expected"),
    ):
        changed = dataclasses.replace(config, plugins=("smtp-delegate",), plugin={"smtp-delegate": section})
        with pytest.raises(PluginError, match=message):
            PluginManager().load(changed.plugins, changed.plugin)
