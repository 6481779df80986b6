"""Retention: what the journal may forget, and when.

- The body (blob) of a finished message is removed once the message is older than
  `retention.blobs` (counted from its acceptance; queue ids sort by time, so the candidates
  are the first keys of the blobs database). A pending message keeps its body however old.
- Records are removed once older than `retention.events`, and only up to a checkpoint: the
  snapshot there becomes the state a rebuild starts from (the retention horizon).

The journal's free pages are reused by later writes, so under steady load the file stops
growing. Each pass is journaled as a `journal.purged` event.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial

import trio
from vsmtp_journal import GroupCommitWriter, Journal, JournalError

from .. import ids
from ..config import RetentionConfig
from . import events as qe
from .projection import QueueProjection
from .state import QueueState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    blobs: tuple[bytes, ...]  # to remove
    blobs_before: bytes  # every finished message's blob below this key is gone after the purge
    through: int  # remove records up to this position (0: none)


def plan(journal: Journal, state: QueueState, config: RetentionConfig, *, now: float) -> Plan:
    """Decide (read-only) what a purge may remove, given the projection's `state`."""
    before = ids.time_prefix(now - config.blobs).encode()
    blobs = []
    for key in journal.blob_keys(before=before):
        queue_id = key.split(b".", 1)[0]  # a message changed after queueing has QUEUEID.N too
        if queue_id.decode() in state.messages:
            continue  # pending: every body it had stays
        accepted = journal.lookup(b"queue:" + queue_id)
        if accepted is None or accepted > state.position:
            continue  # not folded into this state yet (or not a message body): not ours to judge
        blobs.append(key)
    through = 0
    cutoff = now - config.events
    for position in reversed(journal.snapshots()):
        if position <= journal.horizon():
            break
        record = journal.get(position)
        at = record.payload.get("at") if record is not None and isinstance(record.payload, dict) else None
        if isinstance(at, int | float) and at < cutoff and position <= state.position:
            through = position
            break
    return Plan(blobs=tuple(blobs), blobs_before=before, through=through)


def purge(journal: Journal, state: QueueState, config: RetentionConfig, *, now: float) -> tuple[Plan, int, int]:
    """Plan and purge in one go (synchronous: run it in a worker thread)."""
    decided = plan(journal, state, config, now=now)
    removed_blobs, removed_records = journal.purge(blobs=decided.blobs, blobs_before=decided.blobs_before, through=decided.through)
    return decided, removed_blobs, removed_records


async def serve_retention(
    journal: Journal,
    writer: GroupCommitWriter,
    projection: QueueProjection,
    config: RetentionConfig,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A purge every `config.interval` seconds, for as long as the server runs."""
    task_status.started()
    while True:
        await trio.sleep(config.interval)
        now = time.time()
        try:
            decided, blobs, records = await trio.to_thread.run_sync(partial(purge, journal, projection.state, config, now=now))
        except JournalError as exc:
            log.error("retention pass failed: %s", exc)
            continue
        if blobs or records:
            log.info("retention: removed %d message bodies and %d records (through position %d)", blobs, records, decided.through)
            event = qe.JournalPurged(at=now, blobs=blobs, records=records, through=decided.through)
            await writer.append_group([qe.to_append(event)], durable=False)
