"""The stages after queueing, run in the delivery process: postq (once per message, before
its first delivery; the scheduler starts it for a message whose message.accepted says
`postq`) and delivery (per recipient, before each attempt; the workers run it).

Both see the message's Context rebuilt from the journal (rules/recorded.py): the facts of
the session that sent it, its envelope as queued now, its body.

postq: what it decides is journaled in one transaction, closed by message.filtered: the
verdict and actions, and
- an edited message or envelope: message.modified, with the new body (QUEUEID.N);
- quarantine(name): message.quarantined;
- deny or reject: each recipient fails (delivery.failed with the reply), so the sender
  gets a bounce, as for any failure after acceptance.
A hook that raises leaves the message waiting: the stage runs again RETRY seconds later.

delivery: a route a rule chose (set_route) is used for this attempt; deny or reject fails
the recipient, quarantine holds the message, a hook that raises defers the recipient.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import trio
from vsmtp_journal import Append, Journal

from ..config import Config
from ..mail import export
from ..queue import events as qe
from ..queue import history, policy
from ..queue.state import MessageState
from ..rules.context import Context, apply_actions, exports
from ..rules.engine import HookFailed, Stages
from ..rules.recorded import message_context
from .outcomes import deferred
from .signing import Signing

log = logging.getLogger(__name__)

RETRY = 60.0  # seconds before a postq stage whose hook raised runs again

Recipients = list[tuple[str, int]]  # (address, attempts so far)


async def _context(journal: Journal, config: Config, *, queue_id: str, blob: bytes, reverse_path: str, recipients: list[str]) -> Context:
    """The message's Context (the journal is read in a worker thread, not in the event loop)."""

    def read() -> Context:
        accepted = history.accepted(journal, queue_id)
        if accepted is None:
            raise LookupError(f"{queue_id}: message.accepted is no longer in the journal")
        return message_context(journal, config, accepted=accepted, blob=blob, reverse_path=reverse_path, recipients=recipients)

    return await trio.to_thread.run_sync(read)


Exports = list[Callable[[], object]]  # the export actions' writes, to run once the records are committed


async def postq(
    message: MessageState, *, journal: Journal, stages: Stages, config: Config, signing: Signing | None = None
) -> tuple[list[Append], bool, Exports]:
    """The records to journal for `message`, whether they settle the stage (False: a hook
    raised; the records are its rule.verdict "error", and the stage is to run again later),
    and the exports to write once they are committed."""
    queued = [r.address for r in message.recipients]
    ctx = await _context(
        journal, config, queue_id=message.queue_id, blob=message.blob, reverse_path=message.reverse_path, recipients=queued
    )
    assert ctx.message is not None
    body = ctx.message.raw
    now = time.time()
    try:
        verdict = await stages.run("postq", ctx)
    except HookFailed as exc:
        log.warning("%s: %s raised at the postq stage: the message waits %.0fs", message.queue_id, exc.by, RETRY)
        event = qe.RuleVerdict(at=now, session_id=ctx.session_id, stage="postq", by=exc.by, verdict="error")
        return [qe.to_append(event)], False, []
    records: list[qe.JournalEvent] = []
    if verdict.kind != "next":
        records.append(verdict.event(at=now, session_id=ctx.session_id, stage="postq"))
    actions, ctx.actions = ctx.actions, []
    apply_actions(ctx, actions)
    records += [a.event(at=now, session_id=ctx.session_id, queue_id=message.queue_id) for a in actions]
    edited, sender, recipients = ctx.message.raw, ctx.sender or "", tuple(ctx.recipients)
    if signing is not None and not verdict.refuses and verdict.kind != "quarantine":
        sign = partial(
            signing.apply,
            edited,
            trusted=signing.trusted(ctx.client.address, ctx.auth),
            recipients=recipients,
            queue_id=message.queue_id,
            now=now,
        )
        edited, signed = await trio.to_thread.run_sync(sign)
        records += signed
    appends = [qe.to_append(e) for e in records]
    if edited != body or (sender, recipients) != (message.reverse_path, tuple(queued)):
        key = _next_blob(message.blob)
        by = ", ".join(
            dict.fromkeys([*(a.by for a in actions), *(f"vsmtp:{e.method}" for e in records if isinstance(e, qe.MessageSigned))])
        )
        by = by or verdict.by
        modified = qe.MessageModified(
            at=now, queue_id=message.queue_id, stage="postq", by=by, blob=key, size=len(edited), reverse_path=sender, recipients=recipients
        )
        appends.append(qe.to_append(modified, blobs={key: edited}))
    after: list[qe.JournalEvent] = []
    if verdict.kind == "quarantine":
        after.append(qe.MessageQuarantined(at=now, queue_id=message.queue_id, queue=verdict.queue, by=verdict.by))
    elif verdict.refuses:
        reason = f"refused after queueing by {verdict.by}: {verdict.answer}"
        answer = verdict.answer
        after += [
            qe.DeliveryFailed(
                at=now,
                queue_id=message.queue_id,
                recipient=a,
                transport="postq",
                reason=reason,
                status=answer.enhanced or "5.7.1",
                stage="route",
            )
            for a in recipients
        ]
    after.append(qe.MessageFiltered(at=now, queue_id=message.queue_id, verdict=verdict.kind, by=verdict.by))
    envelope = export.Envelope(
        queue_id=message.queue_id,
        accepted_at=message.accepted_at,
        reverse_path=sender,
        recipients=recipients,
        mail_params=ctx.mail_params,
        session_id=ctx.session_id,
    )
    return appends + [qe.to_append(e) for e in after], True, exports(actions, envelope, edited, stage="postq")


def _next_blob(current: bytes) -> bytes:
    """QUEUEID -> QUEUEID.1 -> QUEUEID.2 ... (retention keeps them while the message is pending)."""
    queue_id, _, n = current.partition(b".")
    return queue_id + b"." + str(int(n or b"0") + 1).encode()


@dataclass(slots=True)
class Routed:
    """What the delivery stage decided for a job's recipients."""

    kept: Recipients = field(default_factory=list)  # to deliver now
    routes: dict[str, policy.Route] = field(default_factory=dict)  # the routes rules chose
    settled: Recipients = field(default_factory=list)  # done for now: failed, deferred, or held
    events: list[qe.JournalEvent] = field(default_factory=list)  # verdicts, actions, outcomes


async def delivery(
    *,
    queue_id: str,
    blob: bytes,
    reverse_path: str,
    accepted_at: float,
    recipients: Recipients,
    journal: Journal,
    stages: Stages,
    config: Config,
) -> Routed:
    """Run the delivery rules for each recipient of one delivery job."""
    try:
        ctx = await _context(
            journal, config, queue_id=queue_id, blob=blob, reverse_path=reverse_path, recipients=[a for a, _ in recipients]
        )
    except LookupError as exc:
        log.warning("%s: delivery rules not run: %s", queue_id, exc)
        return Routed(kept=list(recipients))
    now = time.time()
    routed = Routed()
    for address, attempts in recipients:
        ctx.recipient, ctx.route = address, route_name(address, config)
        try:
            verdict = await stages.run("delivery", ctx, recipient=address, route=ctx.route)
        except HookFailed as exc:
            routed.events.append(
                qe.RuleVerdict(at=now, session_id=ctx.session_id, stage="delivery", by=exc.by, verdict="error", recipient=address)
            )
            reason = f"{exc.by} raised at the delivery stage"
            routed.events.append(deferred(queue_id, address, attempts, now=now, reason=reason, config=config, accepted_at=accepted_at))
            routed.settled.append((address, attempts))
            continue
        actions, ctx.actions = ctx.actions, []
        for action in actions:  # set_route: the only action the delivery stage takes
            routed.events.append(action.event(at=now, session_id=ctx.session_id, queue_id=queue_id))
            target, route, *level = action.args  # and the TLS level it gave, if any
            try:
                routed.routes[target] = policy.chosen_route(route, target, config, tls=level[0] if level else "")
            except ValueError as exc:  # e.g. pipe:NAME with no [delivery.pipe.NAME]: an error route, the mail waits
                log.warning("%s: %s: %s", queue_id, target, exc)
                routed.routes[target] = policy.ErrorRoute(reason=str(exc), temporary=True)
        if verdict.kind != "next":
            routed.events.append(verdict.event(at=now, session_id=ctx.session_id, stage="delivery", recipient=address))
        if verdict.refuses:
            reason = f"refused at delivery by {verdict.by}: {verdict.answer}"
            failed = qe.DeliveryFailed(
                at=now,
                queue_id=queue_id,
                recipient=address,
                transport="rules",
                reason=reason,
                status=verdict.answer.enhanced or "5.7.1",
                stage="route",
            )
            routed.events.append(failed)
            routed.settled.append((address, attempts))
        elif verdict.kind == "quarantine":
            routed.events.append(qe.MessageQuarantined(at=now, queue_id=queue_id, queue=verdict.queue, by=verdict.by))
            routed.settled, routed.kept = list(recipients), []  # held: none of it now, not even those kept before
            break
        else:
            routed.kept.append((address, attempts))
    return routed


def route_name(address: str, config: Config) -> str:
    """The route vsmtp chose, as a delivery rule sees it: local, smtp or smtp:[HOST]:PORT."""
    if policy.remote_domain(address, config) is None:
        return "local"
    relay = policy.smarthost(config)
    return f"smtp:[{relay.host}]:{relay.port}" if relay is not None else "smtp"
