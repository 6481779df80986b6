"""DKIM and ARC verification at the data stage, before the 250: the keys every signature
and seal names are looked up at once on trio (within `dkim.timeout`), then dkimpy checks
them in a worker thread (ctx.dkim, ctx.arc). Mail from every client is verified: a
signature is a fact whoever relays it. A message without signatures costs no lookup."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial

import trio

from ... import telemetry
from ...auth import arc, dkim, results
from ...config import Config
from ...queue import events as qe
from ...rules.context import Context
from ...rules.verdicts import Verdict
from ..dns import AnswerCache, DnsPermanent, DnsTemporary
from .base import Check, Shared

_THREADS = trio.CapacityLimiter(8)  # verifications at once, per process (CPU work: hashing, RSA)


class DkimCheck(Check):
    name = "vsmtp:dkim"
    stages = frozenset({"data"})

    def __init__(self, config: Config, cache: AnswerCache) -> None:
        self.dkim = config.dkim.verify
        self.arc = config.arc.verify
        self.timeout = config.dkim.timeout
        self.cache = cache

    async def learn(self, stage: str, ctx: Context) -> None:
        assert ctx.message is not None
        message = ctx.message
        head = message.head.lower()
        signed = self.dkim and b"dkim-signature:" in head
        sealed = self.arc and b"arc-seal:" in head
        if self.dkim and not signed:
            ctx.dkim = results.DkimResult()  # nothing to look up, no thread to wake
        if self.arc and not sealed:
            ctx.arc = results.ArcResult(result="none")
        if not (signed or sealed):
            return
        with telemetry.span("check dkim", attributes={"vsmtp.check": "dkim", "vsmtp.stage": stage}):
            fields = (b"dkim-signature",) * signed + (b"arc-seal", b"arc-message-signature") * sealed
            keys = await self._keys(dkim.key_names(message.head, fields=fields))
            if signed:  # the body hashed as it is read, from memory or the spill file: never joined
                verify = partial(dkim.verify_parts, message.head, message.body_chunks(), keys)
                ctx.dkim = await trio.to_thread.run_sync(verify, limiter=_THREADS)
        if sealed:  # dkimpy's ARC takes the message whole (a spilled one is read into memory)
            with telemetry.span("check arc", attributes={"vsmtp.check": "arc", "vsmtp.stage": stage}):
                ctx.arc = await trio.to_thread.run_sync(partial(arc.verify, message.raw, keys), limiter=_THREADS)

    async def _keys(self, names: list[str]) -> dict[str, bytes | str]:
        """Each key record (its TXT text), or a KeyState; all looked up at once."""
        keys: dict[str, bytes | str] = dict.fromkeys(names, dkim.KeyState.TEMPORARY)

        async def one(name: str) -> None:
            try:
                records = [r for r in await self.cache.txt(name) if b"p=" in r]
            except DnsTemporary:
                return
            except DnsPermanent:
                records = []
            keys[name] = records[0] if records else dkim.KeyState.ABSENT

        with trio.move_on_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(one, name)
        return keys

    def record(self, stage: str, ctx: Context, verdict: Verdict) -> Sequence[qe.JournalEvent]:
        now = time.time()
        found: list[qe.JournalEvent] = []
        # Journaled when there was something to verify: an unsigned message costs no record.
        if ctx.dkim is not None and ctx.dkim.signatures:
            found.append(qe.DkimVerified(at=now, session_id=ctx.session_id, result=results.to_payload(ctx.dkim)))
        if ctx.arc is not None and ctx.arc.result != "none":
            found.append(qe.ArcVerified(at=now, session_id=ctx.session_id, result=results.to_payload(ctx.arc)))
        return found


def build(config: Config, shared: Shared) -> Check | None:
    return DkimCheck(config, shared.dns) if config.dkim.verify or config.arc.verify else None
