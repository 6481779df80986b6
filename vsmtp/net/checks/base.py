"""What every check of vsmtp's own implements (the contract checks/__init__.py runs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ...queue import events as qe
from ...queue import policy
from ...rules.context import Context
from ...rules.verdicts import Verdict
from ..anvil import Anvil
from ..dns import AnswerCache


class Check:
    """One of vsmtp's own checks. `stages` names where it runs; at each of them it may
    `learn` before the rules and plugins (facts they can read, such as ctx.spf) and
    `decide` after them, when they gave no verdict (a rule's accept() settles the stage
    without it; faccept() skips every check from then on). Its verdicts are vsmtp's own
    answers and are not journaled as rule.verdict: a check says what to journal in `record`,
    once the stage's verdict is known (whoever gave it)."""

    name: ClassVar[str] = ""  # "vsmtp:NAME", as verdicts and logs show who said it
    stages: ClassVar[frozenset[str]] = frozenset()

    async def learn(self, stage: str, ctx: Context) -> None:
        """Before the rules and plugins of `stage`."""

    async def decide(self, stage: str, ctx: Context) -> Verdict | None:
        """After the rules and plugins of `stage` said next: a verdict, or None (no objection)."""
        return None

    def record(self, stage: str, ctx: Context, verdict: Verdict) -> Sequence[qe.JournalEvent]:
        """What to journal of this stage, now that `verdict` settled it."""
        return ()


@dataclass(frozen=True, slots=True)
class Shared:
    """What the checks of one process share: the DNS answers' cache, the anvil's tables."""

    dns: AnswerCache
    anvil: Anvil


def trusted(ctx: Context, networks: tuple[policy.IpNetwork, ...]) -> bool:
    """An authenticated client, or one in relay.networks: our own users, whose mail is not
    checked as a stranger's (SPF, DMARC) but signed."""
    return bool(ctx.auth) or policy.may_relay(ctx.client.address, networks)
