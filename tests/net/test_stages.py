"""The stage runner: vsmtp's own checks learn before the rules and decide after them, only
when the rules gave no verdict; faccept stops everything; what a deny or quarantine holds
is kept in the scope's Holds."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from vsmtp.net.checks import Check
from vsmtp.net.stages import StageRunner
from vsmtp.queue import events as qe
from vsmtp.rules import Context, RulesFile
from vsmtp.rules.context import Endpoint
from vsmtp.rules.engine import Stages
from vsmtp.rules.verdicts import Holds, Verdict, reject

RULES = """
from vsmtp.rules import rule, accept, faccept, quarantine

@rule.mail
def decide(ctx):
    seen.append(ctx.results.get("probe"))
    if ctx.sender == "ok@example.org":
        return accept()
    if ctx.sender == "trusted@example.org":
        return faccept()
    if ctx.sender == "suspect@example.org":
        return quarantine("suspect")

seen = []
"""


class Probe(Check):
    name = "vsmtp:probe"
    stages = frozenset({"mail"})

    def __init__(self) -> None:
        self.decided = 0

    async def learn(self, stage: str, ctx: Context) -> None:
        ctx.results["probe"] = f"learned at {stage}"

    async def decide(self, stage: str, ctx: Context) -> Verdict | None:
        self.decided += 1
        return reject("550 5.7.1 the probe refuses")


def runner(tmp_path: Path) -> tuple[StageRunner, Probe, list[qe.JournalEvent], RulesFile]:
    path = tmp_path / "rules.py"
    path.write_text(RULES)
    rules = RulesFile.load(path)
    ctx = Context(
        session_id="S",
        client=Endpoint(ipaddress.ip_address("192.0.2.1"), 1025),
        server=Endpoint(ipaddress.ip_address("127.0.0.1"), 25),
        listener="mx",
        role="mx",
        local_domains=frozenset({"localhost"}),
    )
    journaled: list[qe.JournalEvent] = []

    async def journal(event: qe.JournalEvent) -> None:
        journaled.append(event)

    probe = Probe()
    return StageRunner(Stages(None, rules), [probe], ctx, journal), probe, journaled, rules


async def test_a_check_learns_before_the_rules_and_decides_what_they_left(tmp_path: Path) -> None:
    stages, _probe, journaled, rules = runner(tmp_path)
    stages.ctx.sender = "anyone@example.org"
    verdict = await stages.run("mail")
    assert verdict.refuses and verdict.by == "vsmtp:probe" and str(verdict.answer) == "550 5.7.1 the probe refuses"
    assert rules.rules("mail")[0][1].__globals__["seen"] == ["learned at mail"]  # the rule saw what the check learned
    assert journaled == []  # a check's verdict is vsmtp's own answer, not a rule.verdict


async def test_a_rule_that_settles_the_stage_skips_the_checks_verdict(tmp_path: Path) -> None:
    stages, probe, journaled, _ = runner(tmp_path)
    stages.ctx.sender = "ok@example.org"
    assert (await stages.run("mail")).kind == "accept"
    assert probe.decided == 0
    assert [e.verdict for e in journaled if isinstance(e, qe.RuleVerdict)] == ["accept"]


async def test_quarantine_is_held_and_faccept_stops_everything(tmp_path: Path) -> None:
    stages, probe, _journaled, _ = runner(tmp_path)
    holds = Holds()
    stages.ctx.sender = "suspect@example.org"
    await stages.run("mail", holds)
    assert holds.quarantine == ("suspect", "rules:decide")
    stages.ctx.sender = "trusted@example.org"
    assert (await stages.run("mail", holds)).kind == "faccept"
    stages.ctx.sender = "anyone@example.org"
    assert (await stages.run("mail", holds)).kind == "next"  # nothing runs after faccept
    assert probe.decided == 0
