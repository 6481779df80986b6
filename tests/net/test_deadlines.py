"""Deadlines, not idle timers: a client that trickles a byte at a time is closed when its
command (or its message) is due, however often it sends; a normal client is served while a
thousand tricklers hold connections (under stress the deadlines shorten)."""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from vsmtp.config import Config, LimitsConfig
from vsmtp.net.deadlines import Deadlines
from vsmtp.queue import events as qe

from ..clients import Peer
from ..conftest import port_of, sendmail, wait_journal, with_changes


def test_a_command_deadline_does_not_move_with_each_byte() -> None:
    deadlines = Deadlines(LimitsConfig(command_timeout=300), now=0.0)
    assert deadlines.until(in_data=False, now=0.0) == 300
    assert deadlines.until(in_data=False, now=200.0) == 300  # bytes came, the command did not end
    deadlines.answered()
    assert deadlines.until(in_data=False, now=250.0) == 550


def test_a_transfer_earns_time_only_at_the_minimum_rate() -> None:
    deadlines = Deadlines(LimitsConfig(data_timeout=180, min_data_rate=500), now=0.0)
    assert deadlines.until(in_data=True, now=10.0) == 190
    deadlines.received(50_000)  # 100 seconds' worth at 500 octets a second
    assert deadlines.until(in_data=True, now=60.0) == 290
    deadlines.answered()
    assert deadlines.until(in_data=False, now=61.0) == 361  # back to commands


def test_under_stress_the_deadlines_shorten() -> None:
    busy = True
    deadlines = Deadlines(LimitsConfig(command_timeout=300, stress_timeout=10), now=0.0, stressed=lambda: busy)
    assert deadlines.until(in_data=False, now=0.0) == 10
    deadlines.answered()
    busy = False
    assert deadlines.until(in_data=False, now=5.0) == 305


async def trickle(peer: Peer, data: bytes, interval: float) -> str:
    """Send `data` a byte at a time until the server closes; its last word ("closed": none)."""

    async def send() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):  # the server closed first
            for byte in data:
                await peer.send(bytes([byte]))
                await trio.sleep(interval)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        reply = "closed"
        with contextlib.suppress(EOFError, trio.BrokenResourceError):
            while not reply.startswith("421"):  # replies to the commands it did finish go by
                reply = (await peer.replies(1, timeout=len(data) * interval + 10))[0]
        nursery.cancel_scope.cancel()
    return reply


async def test_a_trickling_client_is_closed_when_its_command_is_due(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"command_timeout": 1.0}))
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    started = trio.current_time()
    reply = await trickle(peer, b"EHLO a-very-slow-client.example\r\n" * 5, 0.1)  # a byte every 0.1 s: never idle for 1 s
    await peer.aclose()
    assert reply.startswith("421 4.4.2")
    assert trio.current_time() - started < 5  # not after the whole trickle (17 s)
    await wait_journal(running, lambda rs: any(r.tag == qe.SessionClosed.TAG and r.payload["reason"] == "timeout" for r in rs))


async def test_a_message_trickled_below_the_minimum_rate_is_cut(start_server: Any, config: Config) -> None:
    running = await start_server(with_changes(config, limits={"data_timeout": 1.0, "min_data_rate": 100}))
    peer = await Peer.connect(port_of(running))
    await peer.replies(1)
    await peer.send(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
    assert (await peer.replies(4))[-1].startswith("354")
    reply = await trickle(peer, b"Subject: slow\r\n\r\n" + b"x" * 200, 0.05)  # 20 octets a second
    await peer.aclose()
    assert reply.startswith("421 4.4.2")


async def test_a_normal_client_is_served_while_a_thousand_tricklers_connect(start_server: Any, config: Config) -> None:
    limits = {"max_connections": 1000, "max_connections_per_ip": 50, "command_timeout": 4.0, "stress_timeout": 1.0}
    running = await start_server(with_changes(config, limits=limits))
    port = port_of(running)
    outcomes: dict[str, int] = {}

    async def trickler(source: str) -> None:
        try:
            peer = await Peer.connect(port, source=source)
        except OSError:
            return
        try:
            greeting = (await peer.replies(1))[0]
            said = await trickle(peer, b"EHLO slow.example\r\n", 1.0) if greeting.startswith("220") else greeting  # 19 s of it
            outcomes[said[:9]] = outcomes.get(said[:9], 0) + 1
        except (EOFError, trio.BrokenResourceError, trio.TooSlowError):
            outcomes["closed"] = outcomes.get("closed", 0) + 1
        await peer.aclose()

    async with trio.open_nursery() as nursery:
        for n in range(1000):
            nursery.start_soon(trickler, f"127.0.{1 + n // 50}.{1 + n % 50}")  # 50 from each of 20 addresses
        await trio.sleep(0.5)
        refusals: dict[str, Any] = {}
        with trio.fail_after(30):
            while True:  # a real client retries after a 421; this one is patient
                try:
                    refusals = await sendmail(running, "a@example.org", ["bob@localhost"], "Subject: normal\r\n\r\nhi\r\n")
                    break
                except Exception:  # 421 while every slot is taken
                    await trio.sleep(0.2)
        assert refusals == {}
    # Every trickler was cut by its deadline (421 4.4.2: within 4 s, 1 s once the server was
    # busy), or refused a slot while they were all taken (421 4.7.0).
    assert sum(outcomes.values()) == 1000 and set(outcomes) <= {"421 4.4.2", "421 4.7.0"}, outcomes
    assert outcomes.get("421 4.4.2", 0) >= 800


def test_refusals_are_logged_in_summary() -> None:
    import logging

    from vsmtp.net.refusals import RefusalLog

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test.refusals")
    logger.addHandler(Keep())
    logger.propagate = False
    now = 0.0
    refusals = RefusalLog(logger, clock=lambda: now)
    for _ in range(600):  # 75 seconds of refusals, 8 a second
        refusals.refused("192.0.2.1", "mx", "421 4.7.0 too many")
        now += 0.125
    refusals.refused("192.0.2.2", "mx", "421 4.7.0 too many")
    assert lines == [
        "refused 192.0.2.1 on mx: 421 4.7.0 too many",
        "refused 192.0.2.1 on mx: 421 4.7.0 too many (479 more refused in the last 60s)",
        "refused 192.0.2.2 on mx: 421 4.7.0 too many",
    ]
