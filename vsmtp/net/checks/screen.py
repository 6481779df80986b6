"""DNSBL and DNSWL scoring at connect, on listeners with `screen = true` (Postfix's
postscreen_dnsbl_sites): every site is asked at once (reversed address under its zone, an A
record; with `=127.0.0.2` only that answer counts), the weights of those that list the
client add up, and a score at the threshold refuses it with 554 5.7.1 before the greeting.
A negative weight (an allowlist) can offset a listing. Answers are cached for their TTL; a
client that passed is not asked about again for `screen.pass_ttl` (per process)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ...config import Config
from ...queue import events as qe
from ...queue import policy
from ...rules.context import Context
from ...rules.verdicts import Verdict, deny
from ..dns import AnswerCache, DnsPermanent, DnsTemporary
from .base import Check, Shared


@dataclass(frozen=True, slots=True)
class Site:
    zone: str
    weight: int
    answer: str  # "" : any address answer lists

    @classmethod
    def parse(cls, text: str) -> Site:
        """ "zone", "zone*weight", "zone=127.0.0.2", "zone=127.0.0.2*weight"."""
        spec, _, weight = text.partition("*")
        zone, _, answer = spec.partition("=")
        return cls(zone=zone.strip().rstrip("."), weight=int(weight) if weight else 1, answer=answer.strip())


def query_name(address: str, zone: str) -> str:
    """1.2.0.192.zone for 192.0.2.1; the nibbles, reversed, for IPv6 (RFC 5782 2.1, 2.4)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.reverse_pointer.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa") + "." + zone


class ScreenCheck(Check):
    name = "vsmtp:screen"
    stages = frozenset({"connect"})

    def __init__(self, config: Config, cache: AnswerCache) -> None:
        self.config = config.screen
        self.screened = {listener.name for listener in config.listeners if listener.screen}
        self.sites = [Site.parse(text) for text in config.screen.dnsbl]
        self.networks = policy.relay_networks(config)
        self.cache = cache
        self._passed: dict[str, float] = {}  # client -> until when it is not screened again

    def _screens(self, ctx: Context) -> bool:
        if ctx.listener not in self.screened or policy.may_relay(ctx.client.address, self.networks):
            return False
        return self._passed.get(str(ctx.client.address), 0.0) <= time.monotonic()

    async def learn(self, stage: str, ctx: Context) -> None:
        if not self.sites or not self._screens(ctx):
            return
        client = str(ctx.client.address)
        listed: list[Site] = []

        async def ask(site: Site) -> None:
            try:
                answers = [str(r) for r in await self.cache.records(query_name(client, site.zone), "A")]
            except (DnsTemporary, DnsPermanent):
                return  # a site that does not answer lists nobody
            if answers and (not site.answer or site.answer in answers):
                listed.append(site)

        with trio.move_on_after(self.config.timeout):
            async with trio.open_nursery() as nursery:
                for site in self.sites:
                    nursery.start_soon(ask, site)
        score = sum(site.weight for site in listed)
        ctx.results["vsmtp:screen"] = {"score": score, "listed": [s.zone for s in listed if s.weight > 0]}

    async def decide(self, stage: str, ctx: Context) -> Verdict | None:
        found = ctx.results.get("vsmtp:screen")
        if found is None:
            return None
        if found["score"] >= self.config.threshold and found["listed"]:
            zones = ", ".join(found["listed"])
            return deny(f"554 5.7.1 Service unavailable; client [{ctx.client.address}] blocked using {zones}")
        self._passed[str(ctx.client.address)] = time.monotonic() + self.config.pass_ttl
        if len(self._passed) > 100_000:
            self._passed.clear()
        return None

    def record(self, stage: str, ctx: Context, verdict: Verdict) -> Sequence[qe.JournalEvent]:
        found = ctx.results.get("vsmtp:screen")
        if found is None:
            return ()
        event = qe.SessionScreened(
            at=time.time(),
            session_id=ctx.session_id,
            test="dnsbl",
            score=found["score"],
            listed=tuple(found["listed"]),
            refused=verdict.refuses,
        )
        return (event,)


def build(config: Config, shared: Shared) -> Check | None:
    if not config.screen.dnsbl or not any(listener.screen for listener in config.listeners):
        return None
    return ScreenCheck(config, shared.dns)
