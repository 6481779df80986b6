"""The LMDB store: positions, blobs in the same transaction, map growth, several processes."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

import cbor2
import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vsmtp_journal import Append, CorruptRecord, Journal, JournalError, JournalFull
from vsmtp_journal.codec import decode_tagged, encode_position, encode_record, frame, tag_of, unframe_record


def test_positions_start_at_one_and_read_back_in_order(tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        assert journal.last_position() == 0
        assert journal.append("a.b", 1, {"n": 1}) == 1
        assert journal.append_batch([Append("a.b", 1, {"n": n}) for n in (2, 3, 4)]) == [2, 3, 4]
        records = list(journal.read(0))
        assert [r.position for r in records] == [1, 2, 3, 4]
        assert [r.payload["n"] for r in records] == [1, 2, 3, 4]
        assert [r.position for r in journal.read(2)] == [3, 4]
        assert [r.position for r in journal.read(0, limit=2)] == [1, 2]
        assert journal.get(3).payload == {"n": 3}  # type: ignore[union-attr]
        assert journal.get(99) is None


def test_more_than_256_records_stay_in_numeric_order(tmp_path: Path) -> None:
    # Big-endian keys: LMDB's byte order must be numeric order across byte boundaries.
    with Journal(tmp_path / "j") as journal:
        journal.append_batch([Append("t", 1, i) for i in range(1000)])
        assert [r.payload for r in journal.read(250, limit=10)] == list(range(250, 260))


def test_bytes_and_nested_payloads_round_trip(tmp_path: Path) -> None:
    payload = {"raw": b"\x00\xff", "list": [1, "two", None, 3.5], "map": {"k": True}}
    with Journal(tmp_path / "j") as journal:
        journal.append("x", 7, payload)
        record = journal.get(1)
    assert record is not None and (record.tag, record.version, record.payload) == ("x", 7, payload)


def test_blobs_are_written_with_their_record(tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        journal.append("message.accepted", 1, {"blob": b"k1"}, blobs={b"k1": b"body" * 1000})
        assert journal.blob(b"k1") == b"body" * 1000
        assert journal.blob(b"missing") is None


def test_a_failed_batch_writes_nothing(tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        with pytest.raises(TypeError):
            journal.append_batch([Append("ok", 1, 1, {b"b": b"x"}), Append("bad", 1, object())])
        assert journal.last_position() == 0
        assert journal.blob(b"b") is None


def test_the_map_grows_on_demand(tmp_path: Path) -> None:
    with Journal(tmp_path / "j", map_size=64 * 1024) as journal:
        for i in range(50):
            journal.append("big", 1, {"i": i}, blobs={f"b{i}".encode(): bytes(8192)})
        assert journal.last_position() == 50


def test_a_maximum_size_makes_the_journal_full_not_broken(tmp_path: Path) -> None:
    with Journal(tmp_path / "j", map_size=64 * 1024, max_map_size=256 * 1024) as journal:
        with pytest.raises(JournalFull):
            for i in range(100):
                journal.append("big", 1, {"i": i}, blobs={f"b{i}".encode(): bytes(8192)})
        last = journal.last_position()
        assert last > 0
        assert [r.position for r in journal.read(0)] == list(range(1, last + 1))


def test_readonly_needs_an_existing_journal(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal"):
        Journal(tmp_path / "nothing", readonly=True)
    with Journal(tmp_path / "j") as journal:
        journal.append("x", 1, None)
    with Journal(tmp_path / "j", readonly=True) as reader:
        assert reader.last_position() == 1
        with pytest.raises(JournalError):
            reader.append("x", 1, None)


def test_a_corrupt_record_names_its_position(tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        journal.append("x", 1, None)
    env = lmdb.open(str(tmp_path / "j"), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(encode_position(2), b"\xff\xfe not cbor", db=env.open_db(b"events", txn=txn))
    env.close()
    with Journal(tmp_path / "j") as journal, pytest.raises(CorruptRecord, match="position 2"):
        list(journal.read(0))


def test_journal_files_are_private(tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        journal.append("x", 1, None)
    assert (tmp_path / "j" / "data.mdb").stat().st_mode & 0o077 == 0


def run_processes(target: Callable[..., None], args: list[tuple[object, ...]]) -> None:
    """Run target(*a) for each a, each in its own (spawned) process, at once; all must succeed."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=a) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def _writer_process(path: str, name: str, count: int) -> None:
    with Journal(path) as journal:
        for i in range(count):
            journal.append("proc", 1, {"by": name, "i": i})


def test_several_processes_append_without_gaps_or_duplicates(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    Journal(path).close()
    run_processes(_writer_process, [(path, f"p{n}", 150) for n in range(3)])
    with Journal(path, readonly=True) as journal:
        records = list(journal.read(0))
    assert [r.position for r in records] == list(range(1, 451))
    for n in range(3):
        mine = [r.payload["i"] for r in records if r.payload["by"] == f"p{n}"]
        assert mine == list(range(150))  # each process's records in its own order


def test_snapshots_are_stored_by_position_and_read_back(tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        journal.append_batch([Append("t", 1, {"at": 1.0}) for _ in range(5)])
        journal.write_snapshot(3, {"state": [1, 2], "raw": b"\x00"})
        journal.write_snapshot(5, {"state": [3]})
        assert journal.snapshots() == [3, 5]
        assert journal.snapshot(3) == {"state": [1, 2], "raw": b"\x00"}
        assert journal.snapshot(4) is None


def test_purge_removes_records_up_to_a_snapshot_with_their_index_and_older_snapshots(tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        for n in range(1, 7):
            journal.append_batch([Append("t", 1, {"n": n}, {f"b{n}".encode(): b"x" * 100}, index=(f"k{n}".encode(),))])
        journal.write_snapshot(2, "two")
        journal.write_snapshot(4, "four")
        with pytest.raises(JournalError, match="no snapshot"):
            journal.purge(through=3)
        assert journal.purge(blobs=[b"b1", b"b2", b"nope"], blobs_before=b"b3", through=4) == (2, 4)
        assert [r.position for r in journal.read(0)] == [5, 6]
        assert journal.horizon() == 4 and journal.snapshots() == [4]
        assert journal.lookup(b"k4") is None and journal.lookup(b"k5") == 5
        assert not journal.has_blob(b"b1") and journal.has_blob(b"b3")
        assert journal.blobs_purged_before() == b"b3"
        assert journal.append("t", 1, {"n": 7}) == 7  # positions go on from where they were
        journal.write_snapshot(7, "seven")
        journal.purge(through=7)
        assert list(journal.read(0)) == [] and journal.last_position() == 7  # even with nothing left
        assert journal.append("t", 1, {"n": 8}) == 8


def test_purged_pages_are_reused_so_the_file_stops_growing(tmp_path: Path) -> None:
    """Steady load with retention: each round adds 40 bodies of 20 KB and purges the bodies
    and records of two rounds ago. Without reuse the file would grow by ~800 KB a round."""
    one_round = 40 * 20_000
    sizes = []
    with Journal(tmp_path / "j") as journal:
        rounds: list[list[bytes]] = []
        for n in range(16):
            keys = [f"{n:04d}-{i:04d}".encode() for i in range(40)]
            for key in keys:
                journal.append_batch([Append("m", 1, {"at": float(n)}, {key: bytes(20_000)})])
            rounds.append(keys)
            journal.write_snapshot(journal.last_position(), {"round": n})
            if n >= 2:
                journal.purge(blobs=rounds[n - 2], through=journal.snapshots()[-3])
            sizes.append((tmp_path / "j" / "data.mdb").stat().st_size)
    assert sizes[-1] - sizes[5] < one_round / 2, sizes  # ten more rounds, less than half a round of growth


def _growing_writer(path: str, name: str) -> None:
    # A tiny initial map: every process has to grow it, or adopt another's growth.
    with Journal(path, map_size=1 << 20) as journal:
        for i in range(60):
            journal.append_batch([Append("proc", 1, {"by": name, "i": i}, {f"{name}-{i}".encode(): bytes(30_000)})])


def test_processes_sharing_a_journal_survive_each_others_map_growth(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    Journal(path, map_size=1 << 20).close()
    run_processes(_growing_writer, [(path, f"p{n}") for n in range(3)])
    with Journal(path, readonly=True) as journal:
        assert [r.position for r in journal.read(0)] == list(range(1, 181))
        assert journal.stats()["blobs"] == 180
        assert journal.stats()["map_bytes"] > 1 << 20


PAYLOADS = st.recursive(st.none() | st.integers() | st.text(), lambda inner: st.lists(inner, max_size=3))


@settings(max_examples=300, deadline=None)
@given(tag=st.text(min_size=0, max_size=300), payload=PAYLOADS)
def test_the_tag_read_from_a_records_first_bytes_is_its_decoded_tag_or_none(tag: str, payload: object) -> None:
    """tag_of reads the tag without decoding the record: it must never name a wrong one."""
    data = encode_record(tag, 1, payload)
    content = unframe_record(1, data)
    peeked = tag_of(content)
    assert peeked is None or peeked == tag.encode()
    if len(tag.encode()) < 256:
        assert peeked == tag.encode()  # the writer's layout: always read
    wanted = decode_tagged(1, data, frozenset({tag.encode()}))
    assert wanted is not None and (wanted.tag, wanted.payload) == (tag, payload)
    assert decode_tagged(1, data, frozenset({tag.encode() + b"x"})) is None


def test_a_record_laid_out_otherwise_is_decoded_to_learn_its_tag() -> None:
    """Another writer may order the map differently: nothing wanted is missed for it."""
    content = cbor2.dumps({"v": 1, "p": {"n": 1}, "t": "message.accepted"})
    assert tag_of(content) is None
    data = frame(content)
    record = decode_tagged(7, data, frozenset({b"message.accepted"}))
    assert record is not None and (record.position, record.tag, record.payload) == (7, "message.accepted", {"n": 1})
    assert decode_tagged(7, data, frozenset({b"session.mail"})) is None


def test_read_batch_skips_unwanted_records_but_still_checks_them(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    for tag in ["session.mail", "message.accepted", "session.data"]:
        journal.append(tag, 1, {"tag": tag})
    records, last = journal.read_batch(0, limit=10, tags=frozenset({"message.accepted"}))
    assert [(r.position, r.tag) for r in records] == [(2, "message.accepted")] and last == 3
    assert journal.read_batch(3, limit=10) == ([], 3)
    records, last = journal.read_batch(0, limit=2)
    assert [r.position for r in records] == [1, 2] and last == 2
    journal.close()
    # A skipped record is not trusted blindly: a changed byte in it is still found.
    env = lmdb.open(str(tmp_path / "j"), max_dbs=4)
    with env.begin(write=True) as txn:
        events = env.open_db(b"events", txn=txn)
        value = bytearray(txn.get(encode_position(3), db=events))
        value[-1] ^= 0xFF
        txn.put(encode_position(3), bytes(value), db=events)
    env.close()
    with Journal(tmp_path / "j") as journal, pytest.raises(CorruptRecord, match="position 3"):
        journal.read_batch(0, limit=10, tags=frozenset({"message.accepted"}))
