"""A session's stages: at each, vsmtp's own checks learn (checks/), the rules file and the
plugins decide (rules/engine.py), and the checks decide what those left open. The session
asks for one verdict per stage and nothing more.

A verdict of the rules or plugins other than next is journaled (rule.verdict); one that
raised comes back as a refusal of this command only (451 4.3.0, journaled as "error").
faccept holds for the rest of the session: no check, rule or plugin runs after it. What a
deny or a quarantine holds is kept in the Holds the caller passes (the session's, or its
transaction's).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from ..queue import events as qe
from ..rules.context import Context
from ..rules.engine import HookFailed, Stages
from ..rules.verdicts import NEXT, Holds, Verdict
from ..smtp import replies
from .checks import Check


class StageRunner:
    def __init__(
        self, stages: Stages, checks: Sequence[Check], ctx: Context, journal: Callable[[qe.JournalEvent], Awaitable[object]]
    ) -> None:
        self.stages = stages
        self.ctx = ctx
        self.journal = journal
        self.faccepted = False  # no check, rule or plugin runs for the rest of the session
        self._checks: dict[str, tuple[Check, ...]] = {}
        for check in checks:
            for stage in check.stages:
                self._checks[stage] = (*self._checks.get(stage, ()), check)

    def active(self, stage: str) -> bool:
        """Whether anything would run at `stage` (so the caller can skip building what it would see)."""
        return not self.faccepted and (self.stages.active(stage) or stage in self._checks)

    async def run(self, stage: str, holds: Holds | None = None, **kwargs: object) -> Verdict:
        if self.faccepted:
            return NEXT
        ctx = self.ctx
        checks = self._checks.get(stage, ())
        for check in checks:
            await check.learn(stage, ctx)
        verdict = await self._decide(stage, checks, **kwargs)
        for check in checks:
            for event in check.record(stage, ctx, verdict):
                await self.journal(event)
        if holds is not None:
            holds.hold(verdict)
        return verdict

    async def _decide(self, stage: str, checks: Sequence[Check], **kwargs: object) -> Verdict:
        verdict = NEXT
        if self.stages.active(stage):
            try:
                verdict = await self.stages.run(stage, self.ctx, **kwargs)
            except HookFailed as exc:
                failed = Verdict("reject", replies.HOOK_FAILED, by=exc.by)
                await self._journal(stage, failed, "error")
                return failed
            if verdict.kind != "next":
                await self._journal(stage, verdict, verdict.kind)
            if verdict.kind == "faccept":
                self.faccepted = True
        if verdict.kind == "next":
            for check in checks:
                said = await check.decide(stage, self.ctx)
                if said is not None and said.kind != "next":
                    return said.said_by(check.name)
        return verdict

    async def _journal(self, stage: str, verdict: Verdict, kind: str) -> None:
        recipient = self.ctx.recipient if stage == "rcpt" else ""
        await self.journal(verdict.event(at=time.time(), session_id=self.ctx.session_id, stage=stage, recipient=recipient, kind=kind))
