"""SPF at MAIL FROM (RFC 7208), once per transaction: pyspf in a worker thread, its DNS
questions answered on trio by vsmtp's resolver, the whole check within `spf.timeout`.
`[spf] mode`: tag (the result in ctx.spf and the headers), reject (fail: 550 5.7.23,
temperror: 451 4.7.24, RFC 7372), off. Trusted clients (authenticated, relay.networks) are
not checked."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Sequence
from functools import partial

import dns.asyncresolver
import trio

from ...auth import results, spf
from ...config import Config
from ...queue import events as qe
from ...queue import policy
from ...rules.context import Context
from ...rules.verdicts import Verdict, reject
from ..dns import ThreadLookups
from .base import Check, trusted

log = logging.getLogger(__name__)

# SPF evaluations at once, per process: each holds a worker thread while its lookups run.
_THREADS = trio.CapacityLimiter(32)
FAILED = "550 5.7.23 SPF validation failed"  # RFC 7372 3.2
TEMPORARY = "451 4.7.24 SPF validation error, try again later"  # RFC 7372 3.3


class SpfCheck(Check):
    name = "vsmtp:spf"
    stages = frozenset({"mail"})

    def __init__(self, config: Config, resolve: dns.asyncresolver.Resolver) -> None:
        self.mode = config.spf.mode
        self.timeout = config.spf.timeout
        self.receiver = config.hostname
        self.networks = policy.relay_networks(config)
        self.resolve = resolve

    async def learn(self, stage: str, ctx: Context) -> None:
        if trusted(ctx, self.networks):
            return
        address = ctx.client.address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        lookups = ThreadLookups(self.resolve, deadline=trio.current_time() + self.timeout)
        run = partial(spf.check, client=str(address), sender=ctx.sender or "", helo=ctx.helo, lookup=lookups, receiver=self.receiver)
        try:
            ctx.spf = await trio.to_thread.run_sync(run, limiter=_THREADS)
        except Exception as exc:  # pyspf failing on odd input: a temporary error, never a crash
            log.warning("session %s: SPF check of <%s> failed: %r", ctx.session_id, ctx.sender, exc)
            ctx.spf = results.SpfResult(
                result="temperror", identity="mailfrom", domain="", sender=ctx.sender or "", helo=ctx.helo, client=str(address),
                explanation=f"SPF check failed: {exc}",
            )  # fmt: skip

    async def decide(self, stage: str, ctx: Context) -> Verdict | None:
        if self.mode != "reject" or ctx.spf is None:
            return None
        if ctx.spf.result == "fail":
            return reject(f"{FAILED}: {_one_line(ctx.spf.explanation) or ctx.spf.domain + ' does not designate this host'}")
        if ctx.spf.result == "temperror":
            return reject(TEMPORARY)
        return None

    def record(self, stage: str, ctx: Context, verdict: Verdict) -> Sequence[qe.JournalEvent]:
        if ctx.spf is None:
            return ()
        return (qe.SpfChecked(at=time.time(), session_id=ctx.session_id, result=results.to_payload(ctx.spf)),)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def build(config: Config, resolve: dns.asyncresolver.Resolver) -> Check | None:
    return SpfCheck(config, resolve) if config.spf.mode != "off" else None
