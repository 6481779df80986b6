"""SPF at MAIL FROM (RFC 7208), once per transaction: pyspf evaluates (auth/spf.py), the
questions it asks are answered on trio (net/dns.py, cached for their TTL) and it evaluates
again, round by round, the whole check within `spf.timeout`.
`[spf] mode`: tag (the result in ctx.spf and the headers), reject (fail: 550 5.7.23,
temperror: 451 4.7.24, RFC 7372), off. Trusted clients (authenticated, relay.networks) are
not checked."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Sequence
from typing import Any

import trio

from ... import telemetry
from ...auth import results, spf
from ...config import Config
from ...queue import events as qe
from ...queue import policy
from ...rules.context import Context
from ...rules.verdicts import Verdict, reject
from ..dns import AnswerCache, DnsPermanent, DnsTemporary, spf_answer
from .base import Check, Shared, trusted

log = logging.getLogger(__name__)

MAX_ROUNDS = 40  # evaluations of one check: each answers at least one more question (pyspf caps lookups)
FAILED = "550 5.7.23 SPF validation failed"  # RFC 7372 3.2
TEMPORARY = "451 4.7.24 SPF validation error, try again later"  # RFC 7372 3.3


class SpfCheck(Check):
    name = "vsmtp:spf"
    stages = frozenset({"mail"})

    def __init__(self, config: Config, cache: AnswerCache) -> None:
        self.mode = config.spf.mode
        self.timeout = config.spf.timeout
        self.receiver = config.hostname
        self.networks = policy.relay_networks(config)
        self.cache = cache

    async def learn(self, stage: str, ctx: Context) -> None:
        if trusted(ctx, self.networks):
            return
        address = ctx.client.address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        client = str(address)
        with telemetry.span("check spf", attributes={"vsmtp.check": "spf", "vsmtp.stage": stage}) as span:
            try:
                ctx.spf = await self._check(ctx, client)
            except Exception as exc:  # pyspf failing on odd input: a temporary error, never a crash
                log.warning("session %s: SPF check of <%s> failed: %r", ctx.session_id, ctx.sender, exc)
                ctx.spf = _temperror(ctx, client, f"SPF check failed: {exc}")
            span.set_attribute("vsmtp.result", ctx.spf.result)

    async def _check(self, ctx: Context, client: str) -> results.SpfResult:
        sender = ctx.sender or ""
        answers: dict[spf.Question, list[Any] | str] = {}
        with trio.move_on_after(self.timeout):
            for _ in range(MAX_ROUNDS):
                found = spf.evaluate(client=client, sender=sender, helo=ctx.helo, answers=answers, receiver=self.receiver)
                if isinstance(found, results.SpfResult):
                    return found
                async with trio.open_nursery() as nursery:  # a round's questions at once
                    for question in found:
                        nursery.start_soon(self._ask, question, answers)
        # Out of time (or rounds): every question still open has no answer.
        for question in found if not isinstance(found, results.SpfResult) else ():
            answers.setdefault(question, spf.TEMPORARY)
        done = spf.evaluate(client=client, sender=sender, helo=ctx.helo, answers=answers, receiver=self.receiver)
        return done if isinstance(done, results.SpfResult) else _temperror(ctx, client, "SPF check did not finish in time")

    async def _ask(self, question: spf.Question, answers: dict[spf.Question, list[Any] | str]) -> None:
        name, qtype = question
        try:
            answers[question] = [spf_answer(qtype, r) for r in await self.cache.records(name, qtype)]
        except DnsTemporary:
            answers[question] = spf.TEMPORARY
        except DnsPermanent:
            answers[question] = []

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


def _temperror(ctx: Context, client: str, why: str) -> results.SpfResult:
    sender = ctx.sender or ""
    domain = sender.rpartition("@")[2].lower() or ctx.helo.lower()
    return results.SpfResult(
        result="temperror", identity="mailfrom", domain=domain, sender=sender, helo=ctx.helo, client=client, explanation=why
    )


def build(config: Config, shared: Shared) -> Check | None:
    return SpfCheck(config, shared.dns) if config.spf.mode != "off" else None
