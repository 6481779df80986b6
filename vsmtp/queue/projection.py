"""The live queue projection: follows the journal and folds each record into QueueState.

It remembers which messages each batch touched, so the scheduler looks only at those
instead of scanning the whole queue after every event.
"""

from __future__ import annotations

import math
from contextlib import aclosing
from dataclasses import replace

import trio
from vsmtp_journal import GroupCommitWriter, Journal, follow

from . import events as ev
from .state import QueueState, apply, fold


def rebuild(journal: Journal) -> QueueState:
    """The queue state folded from position 0: what a live projection must equal."""
    return fold(QueueState(), journal.read(0))


class QueueProjection:
    def __init__(self, journal: Journal, writer: GroupCommitWriter | None = None) -> None:
        self.journal = journal
        self.writer = writer
        self.state = QueueState()
        self._touched: set[str] = set()
        self._changed = trio.Event()

    def catch_up(self) -> None:
        """Fold everything already in the journal (synchronously, before serving)."""
        self.state = fold(self.state, self.journal.read(self.state.position))
        self._touched.update(self.state.messages.keys())

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
        """Block until some message is touched, or `timeout` seconds pass."""
        with trio.move_on_after(timeout):
            while not self._touched:
                await self._changed.wait()

    async def wait_position(self, position: int) -> None:
        """Block until the projection has folded `position` in."""
        while self.state.position < position:
            await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with aclosing(follow(self.journal, after=self.state.position, writer=self.writer)) as records:
            async for record in records:
                event = ev.decode(record)
                self.state = replace(apply(self.state, event), position=record.position)
                queue_id = getattr(event, "queue_id", None)
                if queue_id is not None:
                    self._touched.add(queue_id)
                changed, self._changed = self._changed, trio.Event()
                changed.set()
