"""The post-queue stage: the postq rules and plugins, once per message, after it is queued
and before its first delivery (the scheduler runs it for a message whose message.accepted
says `postq`).

The rules see the message as queued (with our Received header), its envelope and the facts
of the session that sent it, read back from the journal. What they decide is journaled in
one transaction, closed by message.filtered: their verdict and actions, and

- an edited message or envelope: message.modified, with the new body (QUEUEID.N);
- quarantine(name): message.quarantined;
- deny or reject: each recipient fails (delivery.failed with the reply), so the sender
  gets a bounce, as for any failure after acceptance.

A hook that raises leaves the message waiting: the stage runs again RETRY seconds later.
"""

from __future__ import annotations

import logging
import time
from functools import partial

import trio
from vsmtp_journal import Append, Journal

from ..config import Config
from ..queue import events as ev
from ..queue.state import MessageState
from ..rules.context import apply_actions
from ..rules.engine import HookFailed, Stages
from ..rules.recorded import message_context

log = logging.getLogger(__name__)

RETRY = 60.0  # seconds before a stage whose hook raised runs again


async def run(message: MessageState, *, journal: Journal, stages: Stages, config: Config) -> tuple[list[Append], bool]:
    """The records to journal for `message`, and whether they settle the stage (False: a hook
    raised; the records are its rule.verdict "error", and the stage is to run again later)."""
    ctx, body = await trio.to_thread.run_sync(
        partial(
            message_context,
            journal,
            config,
            queue_id=message.queue_id,
            blob=message.blob,
            reverse_path=message.reverse_path,
            recipients=[r.address for r in message.recipients],
        )
    )
    now = time.time()
    try:
        verdict = await stages.run("postq", ctx)
    except HookFailed as exc:
        log.warning("%s: %s raised at the postq stage: the message waits %.0fs", message.queue_id, exc.by, RETRY)
        event = ev.RuleVerdict(at=now, session_id=ctx.session_id, stage="postq", by=exc.by, verdict="error")
        return [Append(*ev.encode(event))], False
    records: list[ev.JournalEvent] = []
    if verdict.kind != "next":
        reply = str(verdict.answer) if verdict.kind in ("deny", "reject") else ""
        records.append(
            ev.RuleVerdict(
                at=now, session_id=ctx.session_id, stage="postq", by=verdict.by, verdict=verdict.kind, reply=reply, queue=verdict.queue
            )
        )
    actions, ctx.actions = ctx.actions, []
    apply_actions(ctx, actions)
    records += [
        ev.RuleAction(at=now, session_id=ctx.session_id, queue_id=message.queue_id, stage=a.stage, by=a.by, action=a.name, args=a.args)
        for a in actions
    ]
    blobs: dict[bytes, bytes] = {}
    assert ctx.message is not None
    edited = ctx.message.raw
    envelope = (ctx.sender or "", tuple(ctx.recipients))
    if edited != body or envelope != (message.reverse_path, tuple(r.address for r in message.recipients)):
        key = _next_blob(message.blob)
        blobs[key] = edited
        by = ", ".join(dict.fromkeys(a.by for a in actions)) or verdict.by
        records.append(
            ev.MessageModified(
                at=now,
                queue_id=message.queue_id,
                stage="postq",
                by=by,
                blob=key,
                size=len(edited),
                reverse_path=envelope[0],
                recipients=envelope[1],
            )
        )
    if verdict.kind == "quarantine":
        records.append(ev.MessageQuarantined(at=now, queue_id=message.queue_id, queue=verdict.queue, by=verdict.by))
    elif verdict.kind in ("deny", "reject"):
        reason = f"refused after queueing by {verdict.by}: {verdict.answer}"
        records += [
            ev.DeliveryFailed(at=now, queue_id=message.queue_id, recipient=address, transport="postq", reason=reason)
            for address in envelope[1]
        ]
    records.append(ev.MessageFiltered(at=now, queue_id=message.queue_id, verdict=verdict.kind, by=verdict.by))
    appends = [Append(*ev.encode(e)) for e in records]
    if blobs:
        i = next(i for i, e in enumerate(records) if isinstance(e, ev.MessageModified))
        appends[i] = Append(*ev.encode(records[i]), blobs=blobs)
    return appends, True


def _next_blob(current: bytes) -> bytes:
    """QUEUEID -> QUEUEID.1 -> QUEUEID.2 ... (retention keeps them while the message is pending)."""
    queue_id, _, n = current.partition(b".")
    return queue_id + b"." + str(int(n or b"0") + 1).encode()
