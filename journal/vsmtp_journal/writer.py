"""Group commit: one trio task per process turns many appends into one synced transaction.

Sessions call `await writer.append(...)`. The writer takes everything queued since its last
commit, writes it as one LMDB transaction in a worker thread and syncs once (or, when the
process says nothing else would run meanwhile, on the event loop's own thread). Appends with
durable=True return only after that commit; durable=False returns at once and rides along in
the next batch. Many sessions, one fsync: this is where throughput comes from.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import trio

from .codec import Record, blob_size
from .errors import JournalError, JournalFull
from .store import Append, Journal

log = logging.getLogger(__name__)

MAX_BATCH = 2048  # appends (records or groups) per transaction: bounds the latency a huge burst adds to one commit
# Octets of blobs per transaction (a group larger than this is one alone): LMDB holds a
# transaction's new pages in memory until it commits, so this bounds the writer's memory.
MAX_BATCH_BYTES = 64 << 20
LINGER = 0.1  # seconds a record nobody waits for may wait for a durable one to ride along with
# Octets of blobs a batch may hold and still be committed on the event loop's own thread when
# `inline` allows it; a larger one always goes to a worker thread. At 256 KiB, a 100 KiB
# message's commit on the loop cost 13% of the throughput of one session delivered end to
# end while a second session ran in another process (seven pairs against the same build
# committing in a thread: 0.87; at 64 KiB: 1.02), where 1 KiB messages gain from it.
INLINE_BYTES = 64 << 10


@dataclass(slots=True)
class _Pending:
    appends: list[Append]  # committed together, in one transaction (append_group)
    done: trio.Event | None
    positions: list[int] = field(default_factory=list)
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    """One synced transaction: the positions it wrote and how long it took (from the moment
    the batch was handed to LMDB until the sync returned)."""

    first: int
    last: int
    records: int
    seconds: float


@dataclass(slots=True)
class BatchStats:
    """What the last commit did; read by telemetry."""

    records: int = 0
    seconds: float = 0.0
    commits: int = 0
    total_records: int = field(default=0)


class GroupCommitWriter:
    """The one writer task of a process. Run `serve` in a nursery, then `append` from anywhere."""

    def __init__(self, journal: Journal, *, linger: float = LINGER, on_commit: Callable[[Commit], None] | None = None) -> None:
        self.journal = journal
        self.linger = linger
        self.on_commit = on_commit  # called after each commit: metrics, waking another process
        # Whether a small batch may be committed without a worker thread, blocking the event
        # loop for the sync: when nothing else in the process has work to do meanwhile (one
        # session alone), the hand-off to the thread and back is pure latency.
        self.inline: Callable[[], bool] = _never
        self.recent: deque[Commit] = deque(maxlen=256)  # the last commits, for commit_of
        self.last_committed = journal.last_position()
        self.stats = BatchStats()
        self._queue: list[_Pending] = []
        self._work = trio.Event()  # something is queued
        self._urgent = trio.Event()  # somebody waits for a commit
        self._committed = trio.Event()
        self._running = False
        self._room: tuple[float, int] | None = None  # (when, bytes) of the last estimate
        self.shortfall = 0  # bytes of the last batch refused for want of space

    def has_room(self, needed: int, *, max_age: float = 0.5) -> bool:
        """Whether the journal can take `needed` bytes more (and at least as much as the last
        batch it refused, until that space has returned). The estimate is at most `max_age`
        seconds old: this is asked for every MAIL."""
        now = trio.current_time()
        if self._room is None or now - self._room[0] > max_age:
            self._room = (now, self.journal.room())
        needed = max(needed, self.shortfall)
        if self._room[1] < needed:
            return False
        self.shortfall = 0
        return True

    async def append(
        self,
        tag: str,
        version: int,
        payload: Any,
        *,
        blobs: Mapping[bytes, bytes] | None = None,
        index: tuple[bytes, ...] = (),
        durable: bool = True,
        urgent: bool = True,
    ) -> int | None:
        """Queue a record. With durable=True, wait for its synced commit and return its position.

        Raises JournalError (JournalFull when out of space) if the batch could not be committed.
        """
        positions = await self.append_group([Append(tag, version, payload, blobs or {}, index)], durable=durable, urgent=urgent)
        return positions[0] if positions else None

    async def append_group(self, appends: Sequence[Append], *, durable: bool = True, urgent: bool = True) -> list[int]:
        """Queue records that must be committed together (all in one transaction, or none);
        with durable=True wait for that commit and return their positions ([] otherwise)."""
        if not self._running:
            raise JournalError("the journal writer is not running")
        pending = _Pending(list(appends), trio.Event() if durable else None)
        self._queue.append(pending)
        self._work.set()
        if pending.done is None:
            return []  # rides along with the next durable commit, or is committed after `linger`
        if urgent:
            self._urgent.set()
        # else: wait for the commit, but let it come with the next urgent one (or the linger)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.positions

    async def wait_committed(self, after: int) -> None:
        """Block until a record with a position greater than `after` is committed (by this
        process, or by another one that `notice_commits` was told about)."""
        while self.last_committed <= after:
            await self._committed.wait()

    def commit_of(self, position: int) -> Commit | None:
        """The recent commit that wrote `position` (for a span's attributes), if still known."""
        for commit in reversed(self.recent):
            if commit.first <= position <= commit.last:
                return commit
        return None

    def notice_commits(self) -> None:
        """Another process sharing the journal committed: wake whoever waits for new records."""
        last = self.journal.last_position()
        if last > self.last_committed:
            self.last_committed = last
            committed, self._committed = self._committed, trio.Event()
            committed.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        task_status.started()
        try:
            while True:
                await self._work.wait()
                # Only records nobody waits for: give a durable one `linger` seconds to come,
                # so that they share its commit instead of paying for one of their own.
                with trio.move_on_after(self.linger):
                    await self._urgent.wait()
                self._work, self._urgent = trio.Event(), trio.Event()
                await self._commit_all()
        finally:
            self._running = False
            with trio.CancelScope(shield=True):
                await self._commit_all()  # what was queued when we were stopped is not dropped
            for pending in self._queue:  # never leave a waiter hanging
                pending.error = JournalError("the journal writer stopped")
                if pending.done is not None:
                    pending.done.set()

    async def _commit_all(self) -> None:
        while self._queue:
            taken, octets = 0, 0
            for pending in self._queue[:MAX_BATCH]:
                size = sum(blob_size(b) for a in pending.appends for b in a.blobs.values())
                if taken and octets + size > MAX_BATCH_BYTES:
                    break
                taken, octets = taken + 1, octets + size
            batch, self._queue = self._queue[:taken], self._queue[taken:]
            await self._commit(batch, octets)

    async def _commit(self, batch: list[_Pending], octets: int) -> None:
        appends = [a for p in batch for a in p.appends]
        started = trio.current_time()
        try:
            if octets <= INLINE_BYTES and self.inline():
                positions = self.journal.append_batch(appends)
            else:
                # Shielded: once a batch is handed to LMDB, its waiters must learn the outcome.
                with trio.CancelScope(shield=True):
                    positions = await trio.to_thread.run_sync(self.journal.append_batch, appends)
        except JournalError as exc:
            log.error("journal commit of %d records failed: %s", len(batch), exc)
            if isinstance(exc, JournalFull):
                self._room = None
                self.shortfall = sum(1024 + sum(blob_size(b) for b in a.blobs.values()) for a in appends)
            for p in batch:
                p.error = exc
                if p.done is not None:
                    p.done.set()
            return
        taken = 0
        for p in batch:
            p.positions, taken = positions[taken : taken + len(p.appends)], taken + len(p.appends)
            if p.done is not None:
                p.done.set()
        self.last_committed = max(self.last_committed, positions[-1])
        commit = Commit(first=positions[0], last=positions[-1], records=len(appends), seconds=trio.current_time() - started)
        self.recent.append(commit)
        if self.on_commit is not None:
            self.on_commit(commit)
        self.stats.records = len(appends)
        self.stats.seconds = commit.seconds
        self.stats.commits += 1
        self.stats.total_records += len(appends)
        committed, self._committed = self._committed, trio.Event()
        committed.set()


def _never() -> bool:
    return False


async def follow(
    journal: Journal,
    *,
    after: int = 0,
    writer: GroupCommitWriter | None = None,
    poll_interval: float = 0.5,
    batch: int = 512,
) -> AsyncGenerator[Record, None]:
    """Yield every record after `after`, then each new one as it is committed.

    Records committed by this process's writer wake the follower at once; records from other
    processes sharing the journal are seen within `poll_interval` seconds.
    """
    async with aclosing(follow_batches(journal, after=after, writer=writer, poll_interval=poll_interval, batch=batch)) as batches:
        async for records, _ in batches:
            for record in records:
                yield record


async def follow_batches(
    journal: Journal,
    *,
    after: int = 0,
    writer: GroupCommitWriter | None = None,
    poll_interval: float = 0.5,
    batch: int = 512,
    tags: frozenset[str] | None = None,
) -> AsyncGenerator[tuple[list[Record], int], None]:
    """As `follow`, a read at a time, for a follower that does its bookkeeping once per read:
    each item is the records one read found (at most `batch`) and the position of the last
    one. With `tags`, only records with those tags are given (Journal.read_batch), so the list
    may be empty while the position moves on; without, it is never empty."""
    while True:
        records, last = journal.read_batch(after, limit=batch, tags=tags)
        if last > after:
            full = last - after >= batch  # positions are gapless past the horizon: maybe more to read
            yield records, last
            after = last
            if full:
                await trio.lowlevel.checkpoint()
                continue
        with trio.move_on_after(poll_interval):
            if writer is not None:
                await writer.wait_committed(after)
            else:
                await trio.sleep_forever()
