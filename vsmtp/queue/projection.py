"""The live queue projection: follows the journal and folds each record into QueueState.

It remembers which messages each batch touched, so the scheduler looks only at those
instead of scanning the whole queue after every event.

Checkpoints: every `journal.checkpoint_interval` seconds (and when it stops) the projection
stores its state with the position it stands at, in one LMDB transaction
(Journal.write_snapshot). A restart loads the newest snapshot and folds only the records
after it. `rebuild` folds from position 0 (or, once retention has purged the oldest records,
from the snapshot at the horizon) and must give the same state: `vsmtp journal rebuild`.
"""

from __future__ import annotations

import logging
import math
from contextlib import aclosing
from dataclasses import replace

import trio
from vsmtp_journal import CorruptRecord, GroupCommitWriter, Journal, JournalError, follow_batches

from . import events as qe
from .state import QUEUE_TAGS, QueueState, apply, fold, from_snapshot, to_snapshot

log = logging.getLogger(__name__)


def rebuild(journal: Journal) -> QueueState:
    """The queue state folded from position 0, or from the snapshot at the retention horizon
    when older records were purged: what a live projection must equal."""
    horizon = journal.horizon()
    base = QueueState() if horizon == 0 else read_snapshot(journal, horizon)
    if base is None:
        raise JournalError(f"records up to {horizon} were purged but the snapshot there is missing or unreadable")
    return fold_journal(base, journal)


FOLD_BATCH = 4096  # records read at once while catching up


def fold_journal(state: QueueState, journal: Journal) -> QueueState:
    """`state` with every later record of the journal folded in. Only the records the queue
    reacts to are decoded (Journal.read_batch): at start-up, most of a journal is sessions."""
    while True:
        records, last = journal.read_batch(state.position, limit=FOLD_BATCH, tags=QUEUE_TAGS)
        if last == state.position:
            return state
        state = fold(state, records)
        if state.position != last:
            state = replace(state, position=last)


def read_snapshot(journal: Journal, position: int) -> QueueState | None:
    try:
        data = journal.snapshot(position)
        if data is None:
            return None
        state = from_snapshot(data)
    except (ValueError, CorruptRecord) as exc:
        log.warning("snapshot at position %d is not usable (%s): replaying instead", position, exc)
        return None
    return state if state.position == position else None


def latest_checkpoint(journal: Journal) -> QueueState | None:
    """The newest readable snapshot, or None."""
    for position in reversed(journal.snapshots()):
        state = read_snapshot(journal, position)
        if state is not None:
            return state
    return None


def write_checkpoint(journal: Journal, state: QueueState) -> None:
    """Store `state` (immutable, so safe to encode in a worker thread) as a snapshot."""
    journal.write_snapshot(state.position, to_snapshot(state))


class QueueProjection:
    def __init__(self, journal: Journal, writer: GroupCommitWriter | None = None) -> None:
        self.journal = journal
        self.writer = writer
        self.state = QueueState()
        self.loaded_from = 0  # the checkpoint position catch_up started from
        self.checkpoints = 0  # written by this process
        self._touched: set[str] = set()
        self._changed = trio.Event()

    def catch_up(self) -> None:
        """Load the newest checkpoint, then fold the records after it (synchronously, before serving)."""
        if self.state.position == 0:
            self.state = latest_checkpoint(self.journal) or rebuild(self.journal)
            self.loaded_from = self.state.position
        self.state = fold_journal(self.state, self.journal)
        self._touched.update(self.state.messages.keys())

    async def serve_checkpoints(self, interval: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Store a snapshot every `interval` seconds when the state moved, and a last one when stopped."""
        written = self.loaded_from
        task_status.started()
        try:
            while True:
                await trio.sleep(interval)
                written = await self._checkpoint(written)
        finally:
            with trio.CancelScope(shield=True):
                await self._checkpoint(written)

    async def _checkpoint(self, written: int) -> int:
        state = self.state
        if state.position <= written:
            return written
        try:
            await trio.to_thread.run_sync(write_checkpoint, self.journal, state)
        except JournalError as exc:
            log.error("cannot write a checkpoint at position %d: %s", state.position, exc)
            return written
        self.checkpoints += 1
        return state.position

    def take_touched(self) -> set[str]:
        """Queue ids changed since the last call (all pending ones after catch_up)."""
        touched, self._touched = self._touched, set()
        return touched

    def touch(self, queue_id: str) -> None:
        """Ask the scheduler to look at `queue_id` again (e.g. after a worker finished)."""
        self._touched.add(queue_id)
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_touched(self, *, timeout: float = math.inf) -> None:
        """Block until some message is touched, or `timeout` seconds pass. Always a checkpoint."""
        await trio.lowlevel.checkpoint()
        with trio.move_on_after(timeout):
            while not self._touched:
                await self._changed.wait()

    async def wait_position(self, position: int) -> None:
        """Block until the projection has folded `position` in."""
        while self.state.position < position:
            await self._changed.wait()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        # Only the records the queue reacts to are decoded: most (a session's commands) are
        # not, and are skipped after their checksum is checked.
        following = follow_batches(self.journal, after=self.state.position, writer=self.writer, tags=QUEUE_TAGS)
        async with aclosing(following) as batches:
            async for records, last in batches:
                # The state and its position are replaced once per read, not once per record.
                state = self.state
                for record in records:
                    event = qe.decode(record)
                    state = apply(state, event)
                    queue_id = getattr(event, "queue_id", None)
                    if queue_id is not None:
                        self._touched.add(queue_id)
                self.state = replace(state, position=last)
                changed, self._changed = self._changed, trio.Event()
                changed.set()
