"""MX lookups against a real DNS server on loopback, answering from a zone file."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsmtp.config import DnsConfig
from vsmtp.net import dns as mx

from ..dnsserver import DnsServer

ZONE = Path(__file__).with_name("test.zone")


@pytest.fixture
def server() -> DnsServer:
    with DnsServer.from_file(ZONE, "test.") as running:
        yield running  # type: ignore[misc]


def resolver(server: DnsServer) -> mx.dns.asyncresolver.Resolver:
    return mx.resolver(DnsConfig(nameservers=(f"{server.host}:{server.port}",), timeout=3))


async def test_exchangers_come_by_preference_with_ipv6_first(server: DnsServer) -> None:
    found = await mx.exchangers("multi.test", resolver(server))
    assert [(e.host, e.preference, e.addresses) for e in found] == [
        ("mx1.multi.test", 10, ("::1", "127.0.0.2")),
        ("mx2.multi.test", 20, ("127.0.0.3",)),
    ]


async def test_no_mx_means_the_domain_itself(server: DnsServer) -> None:
    [only] = await mx.exchangers("flat.test", resolver(server))
    assert (only.host, only.addresses) == ("flat.test", ("127.0.0.4",))
    assert ("flat.test.", "MX") in server.queries


async def test_null_mx_and_missing_domains_are_permanent(server: DnsServer) -> None:
    with pytest.raises(mx.DnsPermanent, match="null MX"):
        await mx.exchangers("nomail.test", resolver(server))
    with pytest.raises(mx.DnsPermanent, match="does not exist"):
        await mx.exchangers("nowhere.test", resolver(server))
    with pytest.raises(mx.DnsPermanent, match="no address"):
        await mx.exchangers("nohost.test", resolver(server))


async def test_equal_preferences_are_shuffled(server: DnsServer) -> None:
    firsts = {(await mx.exchangers("equal.test", resolver(server)))[0].host for _ in range(40)}
    assert firsts == {"a.equal.test", "b.equal.test"}  # 2^-39 odds of a false failure


async def test_a_dead_resolver_is_temporary() -> None:
    dead = mx.resolver(DnsConfig(nameservers=("127.0.0.1:1",), timeout=1))
    with pytest.raises(mx.DnsTemporary):
        await mx.exchangers("multi.test", dead)
