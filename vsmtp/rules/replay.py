"""`vsmtp rules test`: the sessions recorded in the journal, replayed through a rules file.

Each session is played again stage by stage as it happened (connect, helo, auth for each
login whose password was right, then per transaction mail, each RCPT tried, and data when
the message was queued and its body is still in the journal), through the new rules only:
nothing is sent, queued or journaled, and plugins and vsmtp's own checks do not run. The
sender authentication results (ctx.spf, ctx.dkim, ctx.arc, ctx.dmarc) are those recorded:
no DNS lookup is made again. Where a stage's verdict differs from the one recorded (no
rule.verdict recorded means next), that is a Difference.

What cannot be replayed: a message refused at data (its body was never kept), and the
postq and delivery stages (they depend on what happened after queueing). Rules that write
(a greylisting table) do write while they are tested.
"""

from __future__ import annotations

from dataclasses import dataclass

from vsmtp_journal import Journal

from ..config import Config
from ..mail import trace
from ..mail.message import Message
from .engine import HookFailed, Stages
from .loader import RulesFile
from .recorded import RecordedSession, sessions
from .verdicts import Verdict

REPLAYED = ("connect", "helo", "auth", "mail", "rcpt", "data")


@dataclass(frozen=True, slots=True)
class Difference:
    session_id: str
    queue_id: str  # "" unless the transaction's message was queued
    stage: str
    recipient: str
    recorded: str  # "deny 550 5.7.1 ...", "accept", "next" ...
    replayed: str


@dataclass(slots=True)
class Summary:
    sessions: int = 0
    stages: int = 0  # stage runs replayed


async def replay(journal: Journal, config: Config, rules: RulesFile, *, since: float = 0.0) -> tuple[list[Difference], Summary]:
    """Every difference, session by session, and how much was replayed."""
    stages = Stages(None, rules)
    found: list[Difference] = []
    summary = Summary()
    for session in sessions(journal, since=since):
        summary.sessions += 1
        found += await _session(session, journal, config, stages, summary)
    return found, summary


async def _session(session: RecordedSession, journal: Journal, config: Config, stages: Stages, summary: Summary) -> list[Difference]:
    recorded = {(tx, v.stage, v.recipient): _describe(v.verdict, v.reply, v.queue) for tx, v in session.verdicts if v.stage in REPLAYED}
    replayed: dict[tuple[int, str, str], str] = {}
    ctx = session.context(config)
    helo, ctx.helo = ctx.helo, ""
    ctx.auth = ""
    faccepted = False

    async def run(tx: int, stage: str, recipient: str = "") -> Verdict | None:
        nonlocal faccepted
        if faccepted or not stages.active(stage):
            return None
        summary.stages += 1
        try:
            verdict = await stages.run(stage, ctx, recipient=recipient)
        except HookFailed:
            replayed[(tx, stage, recipient)] = "error"
            return Verdict("reject")
        if verdict.kind != "next":
            replayed[(tx, stage, recipient)] = _describe(verdict.kind, str(verdict.answer) if verdict.refuses else "", verdict.queue)
        faccepted = verdict.kind == "faccept"
        return verdict

    if not refused(await run(-1, "connect")):
        denied = False
        if helo:
            ctx.helo = helo
            denied = refused(await run(-1, "helo"))
        for username in session.logins:  # each login whose password was right, until one is let in
            if denied:
                break
            ctx.auth = username
            verdict = await run(-1, "auth")
            if not refused(verdict):
                break
            ctx.auth, denied = "", verdict is not None and verdict.kind == "deny"
        for i, tx in enumerate(session.transactions):
            if denied:
                break
            ctx.new_transaction()
            ctx.sender, ctx.mail_params = tx.sender, dict(tx.params)
            tx.authentication(ctx, config, stage="mail")  # as the checks found it: no lookup again
            if refused(await run(i, "mail")):
                continue
            for address, _ in tx.recipients:
                ctx.recipient = address
                verdict = await run(i, "rcpt", address)
                ctx.recipient = ""
                if verdict is not None and verdict.kind == "deny":
                    break
                if not refused(verdict):
                    ctx.recipients.append(address)
            body = journal.blob(tx.accepted.blob) if tx.accepted is not None else None
            if body is not None and ctx.recipients:
                ctx.message = Message(trace.without_ours(body))  # as the data stage saw it
                tx.authentication(ctx, config, stage="data")
                await run(i, "data")
    differences = []
    for key in sorted(set(recorded) | set(replayed)):
        before, after = recorded.get(key, "next"), replayed.get(key, "next")
        if before != after:
            index, stage, recipient = key
            accepted = session.transactions[index].accepted if index >= 0 else None
            queue_id = accepted.queue_id if accepted is not None else ""
            differences.append(Difference(session.opened.session_id, queue_id, stage, recipient, before, after))
    return differences


def refused(verdict: Verdict | None) -> bool:
    return verdict is not None and verdict.refuses


def _describe(kind: str, reply: str, queue: str) -> str:
    return " ".join(part for part in (kind, reply, queue) if part)
