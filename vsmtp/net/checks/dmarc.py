"""DMARC at the data stage (RFC 7489): the From domains' policies looked up on trio (the
domain's own record, else its organizational domain's), evaluated over ctx.spf and ctx.dkim
(auth/dmarc.py), an ARC chain from a trusted sealer letting a fail through (RFC 8617 7.2).

`[dmarc] mode = "enforce"`: a message whose policy says reject is refused 550 5.7.1, one
whose policy says quarantine goes into the quarantine `dmarc.quarantine`; a rule that
settles the data stage (accept(), or its own verdict) overrides both. "tag": the result is
only told (ctx.dmarc, Authentication-Results). What was done is journaled (auth.dmarc) with
what an aggregate report needs. Trusted clients (authenticated, relay.networks) are not
evaluated: DMARC protects a domain from strangers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import trio

from ... import telemetry
from ...auth import dmarc, results
from ...auth.results import DmarcResult
from ...config import Config
from ...queue import events as qe
from ...queue import policy
from ...rules.context import Context
from ...rules.verdicts import Verdict, quarantine, reject
from ..dns import AnswerCache, DnsPermanent, DnsTemporary
from .base import Check, Shared, trusted

MAX_FROM_DOMAINS = 5  # domains evaluated for one message; a From with more is refused by none of them but counted


class DmarcCheck(Check):
    name = "vsmtp:dmarc"
    stages = frozenset({"data"})

    def __init__(self, config: Config, cache: AnswerCache) -> None:
        self.config = config.dmarc
        self.trusted_sealers = config.arc.trusted_sealers
        self.networks = policy.relay_networks(config)
        self.cache = cache

    async def learn(self, stage: str, ctx: Context) -> None:
        if trusted(ctx, self.networks):
            return
        assert ctx.message is not None
        authors = dmarc.from_domains(ctx.message.head)
        if not authors:
            ctx.dmarc = DmarcResult(result="none", header_from="", reason="no RFC5322.From domain to evaluate")
            return
        with telemetry.span("check dmarc", attributes={"vsmtp.check": "dmarc", "vsmtp.stage": stage}) as span:
            ctx.dmarc = await self._evaluate(ctx, authors)
            span.set_attribute("vsmtp.result", ctx.dmarc.result)

    async def _evaluate(self, ctx: Context, authors: list[str]) -> DmarcResult:
        evaluated: list[DmarcResult] = []
        with trio.move_on_after(self.config.timeout) as scope:
            for author in authors[:MAX_FROM_DOMAINS]:
                try:
                    found = await self._policy(author)
                except DnsTemporary as exc:
                    evaluated.append(DmarcResult(result="temperror", header_from=author, reason=str(exc)))
                    continue
                evaluated.append(dmarc.evaluate(author, found, spf=ctx.spf, dkim=ctx.dkim))
        if scope.cancelled_caught:
            evaluated.append(DmarcResult(result="temperror", header_from=authors[0], reason="policy lookup timed out"))
        result = dmarc.arc_override(dmarc.strictest(evaluated), ctx.arc, self.trusted_sealers)
        if self.config.mode != "enforce" and result.disposition != "none":
            result = replace(result, disposition="none", reason=(result.reason + "; " if result.reason else "") + "mode tag")
        return result

    async def _policy(self, author: str) -> dmarc.Policy | None:
        """The record that governs `author`: its own, else its organizational domain's."""
        record = await self._record(author)
        if record is not None:
            return dmarc.Policy(domain=author, record=record)
        organizational = dmarc.organizational_domain(author)
        if organizational == author:
            return None
        record = await self._record(organizational)
        if record is None:
            return None
        author_exists = await self.cache.exists(author) if "np" in record else True
        return dmarc.Policy(domain=organizational, record=record, author_exists=author_exists)

    async def _record(self, domain: str) -> dict[str, str] | None:
        try:
            return dmarc.parse_record(await self.cache.txt(f"_dmarc.{domain}"))
        except DnsPermanent:
            return None

    async def decide(self, stage: str, ctx: Context) -> Verdict | None:
        if self.config.mode != "enforce" or ctx.dmarc is None:
            return None
        if ctx.dmarc.disposition == "reject":
            return reject(f"550 5.7.1 Message rejected by the DMARC policy of {ctx.dmarc.policy_domain}")
        if ctx.dmarc.disposition == "quarantine":
            return quarantine(self.config.quarantine)
        return None

    def record(self, stage: str, ctx: Context, verdict: Verdict) -> Sequence[qe.JournalEvent]:
        if ctx.dmarc is None:
            return ()
        done = "reject" if verdict.refuses else "quarantine" if verdict.kind == "quarantine" else "none"
        result = ctx.dmarc
        if done != result.disposition:
            by = verdict.by or "the rules"
            result = replace(result, disposition=done, reason=(result.reason + "; " if result.reason else "") + f"decided by {by}")
        return (
            qe.DmarcEvaluated(
                at=time.time(),
                session_id=ctx.session_id,
                source_ip=str(ctx.client.address),
                envelope_from=(ctx.sender or "").rpartition("@")[2].lower(),
                envelope_to=(ctx.recipients[0].rpartition("@")[2].lower() if ctx.recipients else ""),
                result=results.to_payload(result),
                spf=results.to_payload(ctx.spf) if ctx.spf is not None else {},
                dkim=tuple(results.to_payload(ctx.dkim)["signatures"]) if ctx.dkim is not None else (),
            ),
        )


def build(config: Config, shared: Shared) -> Check | None:
    return DmarcCheck(config, shared.dns) if config.dmarc.mode != "off" else None
