"""Verdicts: what a rule or a plugin says at a stage.

    None or NEXT   no opinion: the next rule, then the next plugin, then vsmtp's own checks
    accept()       this stage is settled: vsmtp's own checks for it are skipped
    reject(reply)  this recipient only (at rcpt; elsewhere, this command only)
    deny(reply)    the transaction: this command and every later one in it are refused
    faccept()      accept everything from here on: no rule, plugin or check runs after it
    quarantine(n)  take the message, then keep it in the quarantine queue `n`, undelivered

The rules file runs first, then the plugins in configured order; the first verdict other
than next settles the stage. deny, faccept and quarantine hold for the later stages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from ..queue import events as qe
from ..smtp import replies
from ..smtp.replies import Reply

Kind = Literal["next", "accept", "reject", "deny", "faccept", "quarantine"]

_REPLY = re.compile(r"^([245]\d\d)(?: ([245]\.\d{1,3}\.\d{1,3}))?(?: (.*))?$", re.DOTALL)
DENIED = Reply.of(554, "5.7.1", "Rejected by policy")
REJECTED = Reply.of(550, "5.7.1", "Recipient rejected by policy")


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    reply: Reply | None = None  # for reject and deny; None: the default for the kind
    queue: str = ""  # for quarantine
    by: str = ""  # who said it: "rules:FUNCTION" or the plugin's name (set by the engine)

    @property
    def refuses(self) -> bool:
        """A refusal: deny or reject (its reply is `answer`)."""
        return self.kind in ("deny", "reject")

    def said_by(self, by: str) -> Verdict:
        return self if self.by else replace(self, by=by)

    def at_stage(self, stage: str) -> Verdict:
        """With the stage's own default reply: a refused login is answered as AUTH failures are."""
        if stage == "auth" and self.reply is None and self.refuses:
            return replace(self, reply=replies.AUTH_REFUSED)
        return self

    def event(self, *, at: float, session_id: str, stage: str, recipient: str = "", kind: str = "") -> qe.RuleVerdict:
        """The rule.verdict that records it (`kind` "error" for a hook that raised)."""
        return qe.RuleVerdict(
            at=at,
            session_id=session_id,
            stage=stage,
            by=self.by,
            verdict=kind or self.kind,
            reply=str(self.answer) if self.refuses else "",
            recipient=recipient,
            queue=self.queue,
        )

    @property
    def answer(self) -> Reply:
        """The reply a refusal sends."""
        if self.reply is not None:
            return self.reply
        return REJECTED if self.kind == "reject" else DENIED


NEXT = Verdict("next")


@dataclass(slots=True)
class Holds:
    """What earlier verdicts hold for what follows, in one scope (the session, or one
    transaction): a deny refuses every later command of the scope with its answer, a
    quarantine keeps every message of it. (faccept holds for the whole session: the stage
    runner keeps it.)"""

    denied: Verdict | None = None
    quarantine: tuple[str, str] = ("", "")  # (queue, by)

    def hold(self, verdict: Verdict) -> None:
        if verdict.kind == "deny":
            self.denied = verdict
        elif verdict.kind == "quarantine":
            self.quarantine = (verdict.queue, verdict.by)

    def for_transaction(self) -> Holds:
        """A transaction's holds: it starts with the session's quarantine, and denies of its own."""
        return Holds(quarantine=self.quarantine)


def accept() -> Verdict:
    return Verdict("accept")


def faccept() -> Verdict:
    return Verdict("faccept")


def reject(reply: str | Reply | None = None) -> Verdict:
    return Verdict("reject", _reply(reply))


def deny(reply: str | Reply | None = None) -> Verdict:
    return Verdict("deny", _reply(reply))


def quarantine(name: str) -> Verdict:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ValueError(f"quarantine name {name!r}: letters, digits, '_', '.', '-' only, at most 64")
    return Verdict("quarantine", queue=name)


def _reply(reply: str | Reply | None) -> Reply | None:
    """A Reply from "550 5.7.1 text" (the enhanced code is optional), checked: a refusal is
    4xx or 5xx."""
    if reply is None or isinstance(reply, Reply):
        return reply
    match = _REPLY.match(reply.strip())
    if match is None or match.group(1)[0] == "2":
        raise ValueError(f"not a refusal reply: {reply!r} (want '550 5.7.1 text' or '451 text')")
    code, enhanced, text = match.groups()
    if enhanced is not None and enhanced[0] != code[0]:
        raise ValueError(f"reply {reply!r}: the enhanced code's class must match the reply code")
    text = (text or "Rejected by policy").replace("\r", " ").replace("\n", " ")
    return Reply.of(int(code), enhanced, text)


def of(result: object, by: str) -> Verdict:
    """What a hook returned, as a Verdict said by `by` (None is next)."""
    if result is None:
        return NEXT
    if isinstance(result, Verdict):
        return result.said_by(by)
    raise TypeError(f"{by} returned {result!r}, not a verdict (None, NEXT, accept(), reject(), deny(), faccept(), quarantine())")
