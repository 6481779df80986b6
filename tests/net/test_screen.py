"""Before the greeting and at RCPT, as postscreen and postgrey do: a client that talks
before its turn is refused (pregreet), a client listed by a DNSBL (from the tests' loopback
DNS server) is refused while an unlisted one is served, and greylisting has a first attempt
retried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from vsmtp.config import Config, DnsConfig, ListenerConfig
from vsmtp.queue import events as qe

from ..clients import Peer
from ..conftest import has_tag, port_of, wait_journal, with_changes
from ..dnsserver import DnsServer

ZONE = """$ORIGIN test.
$TTL 300
@ SOA ns.test. h.test. 1 3600 600 86400 300
@ NS ns.test.
2.0.0.127.bl          A 127.0.0.2
2.0.0.127.other-bl    A 127.0.0.4
3.0.0.127.other-bl    A 127.0.0.4
3.0.0.127.wl          A 127.0.0.2
"""


@pytest.fixture
def lists() -> Any:
    with DnsServer(ZONE, "test.") as server:
        yield server


def screened(config: Config, dns: DnsServer, **screen: Any) -> Config:
    listener = ListenerConfig(addresses=("127.0.0.1:0",), certificates=config.listeners[0].certificates, screen=True)
    return with_changes(
        config,
        listeners=(listener,),
        dns=DnsConfig(nameservers=(f"{dns.host}:{dns.port}",), timeout=2.0),
        screen=screen,
    )


async def greeting(running: Any, source: str, *, early: bytes = b"") -> list[str]:
    peer = await Peer.connect(port_of(running), source=source)
    if early:
        await peer.send(early)
    try:
        said = await peer.replies(1)
    except EOFError:
        said = ["closed"]
    await peer.aclose()
    return said


async def test_a_listed_client_is_refused_and_an_unlisted_one_served(start_server: Any, config: Config, lists: DnsServer) -> None:
    sites = ("bl.test*2", "other-bl.test=127.0.0.4", "wl.test*-3")
    running = await start_server(screened(config, lists, dnsbl=sites, threshold=2))
    assert (await greeting(running, "127.0.0.2"))[0].startswith("554 5.7.1 Service unavailable; client [127.0.0.2] blocked using")
    assert (await greeting(running, "127.0.0.1"))[0].startswith("220")  # listed nowhere
    assert (await greeting(running, "127.0.0.3"))[0].startswith("220")  # other-bl (1) - wl (3): allowed
    records = await wait_journal(running, has_tag(qe.SessionScreened.TAG, 3))
    screens = [qe.decode(r) for r in records if r.tag == qe.SessionScreened.TAG]
    assert [(s.score, s.refused) for s in screens] == [(3, True), (0, False), (-2, False)]
    assert set(screens[0].listed) == {"bl.test", "other-bl.test"}


async def test_a_client_that_talks_before_the_greeting_is_refused(start_server: Any, config: Config, lists: DnsServer) -> None:
    running = await start_server(screened(config, lists, pregreet=0.5))
    peer = await Peer.connect(port_of(running))
    await peer.send(b"EHLO impatient.example\r\n")
    first = await peer.stream.receive_some(100)
    assert first.startswith(b"220-mx.test")
    said = await peer.replies(1)
    assert said[0].startswith("521 5.5.1")
    await peer.aclose()
    patient = await Peer.connect(port_of(running))
    said = await patient.replies(1)  # the whole greeting, once the wait is over
    assert said[0].startswith("220 ")
    await patient.send(b"EHLO patient.example\r\n")
    assert (await patient.replies(1))[0].startswith("250")
    await patient.aclose()


async def test_greylisting_asks_a_first_attempt_to_retry(start_server: Any, config: Config, tmp_path: Path) -> None:
    greylist = {"enabled": True, "delay": 0.5, "passes": 2, "database": str(tmp_path / "greylist.sqlite")}
    running = await start_server(with_changes(config, greylist=greylist))

    async def rcpt(sender: str, recipient: str, source: str = "127.0.0.1") -> str:
        peer = await Peer.connect(port_of(running), source=source)
        await peer.replies(1)
        await peer.send(f"EHLO c.example\r\nMAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\n".encode())
        said = (await peer.replies(3))[2]
        await peer.aclose()
        return said

    assert (await rcpt("a@example.org", "bob@localhost")).startswith("450 4.7.1 Greylisted")
    assert (await rcpt("a@example.org", "bob@localhost")).startswith("450 4.7.1")  # too soon
    await trio.sleep(0.6)
    assert (await rcpt("a@example.org", "bob@localhost", source="127.0.0.9")).startswith("250")  # same /24, after the delay
    assert (await rcpt("c@example.org", "carol@localhost")).startswith("450")  # another triplet
    await trio.sleep(0.6)
    assert (await rcpt("c@example.org", "carol@localhost")).startswith("250")
    # Two triplets passed: the client itself passes now.
    assert (await rcpt("new@example.org", "dave@localhost")).startswith("250")
    assert (await rcpt("x@example.org", "nobody-here@elsewhere.test")).startswith("554")  # relay refusal comes first
