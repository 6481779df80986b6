"""Large bodies in chunks: stored from memory or from a stream without being joined, read
back whole or a chunk at a time, purged with their chunks, every chunk checked by verify,
and salvaged whole or reported lost, never half."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from vsmtp_journal import Append, CorruptBlob, Journal, salvage, verify
from vsmtp_journal.codec import CHUNK, pieces

from ..test_integrity import flip


class Stream:
    """A part of a blob that is not in memory: read in pieces, as a spill file is."""

    def __init__(self, data: bytes) -> None:
        self.data, self.reads = data, 0

    def __len__(self) -> int:
        return len(self.data)

    def chunks(self, size: int) -> Iterator[bytes]:
        for start in range(0, len(self.data), size):
            self.reads += 1
            yield self.data[start : start + size]


def test_pieces_cut_parts_into_chunks_without_losing_or_adding_an_octet() -> None:
    parts = [b"ab", memoryview(b"cdefg"), Stream(b"hijklmnopq"), b""]
    chunks = [b"".join(bytes(p) for p in chunk) for chunk in pieces(parts, size=4)]
    assert chunks == [b"abcd", b"efgh", b"ijkl", b"mnop", b"q"]
    assert [b"".join(c) for c in pieces([b"abcd"], size=4)] == [b"abcd"]  # no empty chunk after an exact fit
    assert [b"".join(c) for c in pieces([], size=4)] == [b""]  # an empty blob is one empty chunk


def test_a_large_body_is_kept_in_chunks_and_read_back_whole_or_a_chunk_at_a_time(tmp_path: Path) -> None:
    body = os.urandom(3 * CHUNK + 77)
    stream = Stream(body)
    with Journal(tmp_path / "j") as journal:
        journal.append_batch(
            [
                Append("m", 1, {}, {b"Q1": (b"Received: x\r\n", body)}),
                Append("m", 1, {}, {b"Q2": (b"Received: y\r\n", stream)}),
                Append("m", 1, {}, {b"Q3": b"small"}),
            ]
        )
        assert stream.reads == 4  # read once, in pieces: never joined
        assert journal.blob(b"Q1") == b"Received: x\r\n" + body
        assert journal.blob(b"Q2") == b"Received: y\r\n" + body
        chunks = [bytes(c) for c in journal.blob_chunks(b"Q1")]
        assert [len(c) for c in chunks] == [CHUNK, CHUNK, CHUNK, len(body) + 13 - 3 * CHUNK]
        assert b"".join(chunks) == b"Received: x\r\n" + body
        assert [bytes(c) for c in journal.blob_chunks(b"Q3")] == [b"small"] and list(journal.blob_chunks(b"nope")) == []
        assert list(journal.blob_keys()) == [b"Q1", b"Q2", b"Q3"]  # the chunks are not blobs of their own
        assert journal.check_blob(b"Q1") and not journal.check_blob(b"nope")
        journal.append("m", 1, {}, {b"Q1": b"stored again, small"})  # the old chunks go with it
        assert journal.blob(b"Q1") == b"stored again, small"
        assert journal.purge(blobs=[b"Q1", b"Q2"]) == (2, 0)
        assert journal.stats()["blobs"] == 1  # Q3 alone: no chunk is left behind


def test_a_damaged_chunk_is_named_and_never_read_back(tmp_path: Path) -> None:
    body = os.urandom(2 * CHUNK) + b"DAMAGE-IN-THE-LAST-CHUNK" + os.urandom(100)
    with Journal(tmp_path / "j") as journal:
        journal.append("m", 1, {"blob": "Q1"}, {b"Q1": body, b"Q2": os.urandom(2 * CHUNK)})
    assert flip(tmp_path / "j" / "data.mdb", b"DAMAGE-IN-THE-LAST-CHUNK") >= 1
    with Journal(tmp_path / "j") as journal:
        with pytest.raises(CorruptBlob, match="chunk 3 of 3: checksum mismatch"):
            journal.blob(b"Q1")
        with pytest.raises(CorruptBlob):
            list(journal.blob_chunks(b"Q1"))
        report = verify(journal, blobs_of=lambda record: [record.payload["blob"].encode()])
        expected = "m refers to blob 'Q1', which is corrupt: chunk 3 of 3: checksum mismatch (124 octets)"
        assert [p.what for p in report.problems] == [expected]
        assert journal.blob(b"Q2") is not None
    report = salvage(tmp_path / "j", tmp_path / "saved")
    assert [key for key, _ in report.lost_blobs] == [b"Q1"] and "chunk 3 of 3" in report.lost_blobs[0][1]
    assert report.blobs == 1  # Q2, whole; Q1 not half
    with Journal(tmp_path / "saved") as saved:
        assert saved.blob(b"Q1") is None and saved.blob(b"Q2") is not None
        assert list(saved.blob_keys()) == [b"Q2"] and saved.stats()["blobs"] == 3  # its index and two chunks
