"""Group commit: many concurrent appends, few synced transactions; durable means committed."""

from __future__ import annotations

import threading
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import trio
from vsmtp_journal import GroupCommitWriter, Journal, JournalError, JournalFull, follow
from vsmtp_journal.writer import INLINE_BYTES


async def test_concurrent_durable_appends_share_commits(tmp_path: Path, nursery: trio.Nursery) -> None:
    journal = Journal(tmp_path / "j")
    writer = GroupCommitWriter(journal)
    await nursery.start(writer.serve)
    positions: list[int] = []

    async def one(i: int) -> None:
        position = await writer.append("t", 1, {"i": i}, durable=True)
        assert position is not None
        # Durable: the record is readable by anyone the moment append returns.
        assert journal.get(position) is not None
        positions.append(position)

    async with trio.open_nursery() as senders:
        for i in range(200):
            senders.start_soon(one, i)
    assert sorted(positions) == list(range(1, 201))
    assert writer.stats.total_records == 200
    assert writer.stats.commits < 200  # batched: fewer synced transactions than appends
    nursery.cancel_scope.cancel()


async def test_non_durable_appends_ride_along_in_order(tmp_path: Path, nursery: trio.Nursery) -> None:
    journal = Journal(tmp_path / "j")
    writer = GroupCommitWriter(journal)
    await nursery.start(writer.serve)
    assert await writer.append("a", 1, 1, durable=False) is None
    assert await writer.append("b", 1, 2, durable=False) is None
    last = await writer.append("c", 1, 3, durable=True)
    assert last == 3
    assert [r.tag for r in journal.read(0)] == ["a", "b", "c"]
    nursery.cancel_scope.cancel()


async def test_append_before_serve_is_an_error(tmp_path: Path) -> None:
    writer = GroupCommitWriter(Journal(tmp_path / "j"))
    with pytest.raises(JournalError):
        await writer.append("t", 1, None)


async def test_a_full_journal_fails_the_waiters_and_the_writer_goes_on(tmp_path: Path, nursery: trio.Nursery) -> None:
    journal = Journal(tmp_path / "j", map_size=64 * 1024, max_map_size=128 * 1024)
    writer = GroupCommitWriter(journal)
    await nursery.start(writer.serve)
    with pytest.raises(JournalFull):
        await writer.append("big", 1, None, blobs={b"k": bytes(512 * 1024)})
    assert await writer.append("small", 1, None) == 1  # the writer still works
    nursery.cancel_scope.cancel()


async def test_follow_sees_old_and_new_records(tmp_path: Path, nursery: trio.Nursery) -> None:
    journal = Journal(tmp_path / "j")
    journal.append("old", 1, None)
    writer = GroupCommitWriter(journal)
    await nursery.start(writer.serve)
    seen: list[str] = []

    async def reader() -> None:
        async with aclosing(follow(journal, after=0, writer=writer, poll_interval=30)) as records:
            async for record in records:
                seen.append(record.tag)
                if len(seen) == 3:
                    return

    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            inner.start_soon(reader)
            await writer.append("new1", 1, None)
            await writer.append("new2", 1, None)
    assert seen == ["old", "new1", "new2"]
    nursery.cancel_scope.cancel()


async def test_lazy_records_share_the_next_durable_commit(tmp_path: Path, nursery: trio.Nursery) -> None:
    journal = Journal(tmp_path / "j")
    writer = GroupCommitWriter(journal, linger=5.0)
    await nursery.start(writer.serve)
    for i in range(3):  # MAIL, RCPT ... nobody waits for these
        await writer.append("lazy", 1, i, durable=False)
    await trio.sleep(0.05)
    assert writer.stats.commits == 0  # not committed alone: they wait for a ride
    assert await writer.append("urgent", 1, 3, durable=True) == 4
    assert writer.stats.commits == 1 and writer.stats.records == 4  # one synced transaction for all


async def test_a_lazy_record_alone_is_committed_after_the_linger(tmp_path: Path, nursery: trio.Nursery) -> None:
    journal = Journal(tmp_path / "j")
    writer = GroupCommitWriter(journal, linger=0.05)
    await nursery.start(writer.serve)
    await writer.append("lazy", 1, 0, durable=False)
    with trio.fail_after(5):
        await writer.wait_committed(0)
    assert journal.get(1) is not None


async def test_lazy_records_are_committed_when_the_writer_stops(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    writer = GroupCommitWriter(journal, linger=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.serve)
        await writer.append("session.closed", 1, 0, durable=False)
        nursery.cancel_scope.cancel()
    assert journal.get(1) is not None  # not lost with the stop


async def test_a_group_is_committed_whole_and_contiguous(tmp_path: Path, nursery: trio.Nursery) -> None:
    from vsmtp_journal import Append

    journal = Journal(tmp_path / "j")
    writer = GroupCommitWriter(journal)
    await nursery.start(writer.serve)
    group: list[int] = []

    async def grouped() -> None:
        group.extend(await writer.append_group([Append("g", 1, {"n": n}, {f"b{n}".encode(): b"x"}) for n in range(3)]))

    async with trio.open_nursery() as senders:
        for i in range(50):
            senders.start_soon(lambda i=i: writer.append("t", 1, {"i": i}))
        senders.start_soon(grouped)
    assert group == list(range(group[0], group[0] + 3))  # nothing of the others in between
    assert [journal.get(p).payload["n"] for p in group] == [0, 1, 2]  # type: ignore[union-attr]
    assert writer.commit_of(group[0]) is writer.commit_of(group[2])  # one transaction
    nursery.cancel_scope.cancel()


class _Threads(Journal):
    """A journal that notes which thread wrote each batch."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.threads: list[int] = []

    def append_batch(self, appends: Any) -> list[int]:
        self.threads.append(threading.get_ident())
        return super().append_batch(appends)


async def test_a_small_batch_is_committed_on_the_loop_when_inline_allows(tmp_path: Path, nursery: trio.Nursery) -> None:
    journal = _Threads(tmp_path / "j")
    writer = GroupCommitWriter(journal)
    await nursery.start(writer.serve)
    loop = threading.get_ident()
    assert await writer.append("threaded", 1, None) == 1
    writer.inline = lambda: True
    assert await writer.append("inline", 1, None, blobs={b"small": bytes(1024)}) == 2
    assert journal.get(2) is not None  # durable when append returns, as from the thread
    assert await writer.append("large", 1, None, blobs={b"large": bytes(INLINE_BYTES + 1)}) == 3
    assert [t == loop for t in journal.threads] == [False, True, False]  # the large one still goes to a thread
    nursery.cancel_scope.cancel()


async def test_an_inline_commit_that_fails_fails_its_waiters(tmp_path: Path, nursery: trio.Nursery) -> None:
    journal = Journal(tmp_path / "j", map_size=64 * 1024, max_map_size=128 * 1024)
    writer = GroupCommitWriter(journal)
    writer.inline = lambda: True
    await nursery.start(writer.serve)
    with pytest.raises(JournalFull):
        await writer.append("big", 1, None, blobs={b"k": bytes(200 * 1024)})
    assert await writer.append("small", 1, None) == 1
    nursery.cancel_scope.cancel()


async def test_follow_batches_gives_each_read_whole_then_what_comes(tmp_path: Path, nursery: trio.Nursery) -> None:
    from vsmtp_journal import follow_batches

    journal = Journal(tmp_path / "j")
    for i in range(5):
        journal.append("old", 1, i)
    writer = GroupCommitWriter(journal)
    await nursery.start(writer.serve)
    seen: list[list[int]] = []
    with trio.fail_after(5):
        async with aclosing(follow_batches(journal, after=1, writer=writer, batch=3, poll_interval=30)) as batches:
            async for records, last in batches:
                seen.append([r.position for r in records])
                assert last == seen[-1][-1]
                if len(seen) == 2:
                    await writer.append("new", 1, None)
                if len(seen) == 3:
                    break
    assert seen == [[2, 3, 4], [5], [6]]  # at most `batch` a read; the new record wakes it at once
    nursery.cancel_scope.cancel()


async def test_follow_batches_with_tags_gives_only_those_and_moves_past_the_others(tmp_path: Path, nursery: trio.Nursery) -> None:
    from vsmtp_journal import follow_batches

    journal = Journal(tmp_path / "j")
    for i, tag in enumerate(["session.mail", "message.accepted", "session.data", "session.mail", "session.data"], start=1):
        journal.append(tag, 1, {"n": i})
    writer = GroupCommitWriter(journal)
    await nursery.start(writer.serve)
    seen: list[tuple[list[tuple[int, str, object]], int]] = []
    with trio.fail_after(5):
        following = follow_batches(journal, writer=writer, batch=3, poll_interval=30, tags=frozenset({"message.accepted"}))
        async with aclosing(following) as batches:
            async for records, last in batches:
                seen.append(([(r.position, r.tag, r.payload) for r in records], last))
                if len(seen) == 2:
                    await writer.append("message.accepted", 1, {"n": 6})
                if len(seen) == 3:
                    break
    # Nothing wanted in the second read, but its position is given: the follower moves past it.
    assert seen == [([(2, "message.accepted", {"n": 2})], 3), ([], 5), ([(6, "message.accepted", {"n": 6})], 6)]
    nursery.cancel_scope.cancel()
