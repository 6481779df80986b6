"""Salvage: copy every readable record and blob of a damaged journal into a fresh one.

It does not walk LMDB's trees (a damaged page can make LMDB abort the process): it reads
every page of the file for the leaf entries it still carries. The journal only appends (a
record or a body under a key is never rewritten), so any copy of an entry found on any
page, a freed one included, is the entry; each is checked (checksum, CBOR) before it is
kept, and what retention removed (at or before the horizon) stays removed. Entries written
before checksums existed cannot be checked, and are left out.

A record that cannot be found or read leaves its position to a `journal.lost` record, so
the positions stay gapless and the snapshots, which name positions, stay true. The source
is only read; a truncated file is read as far as it goes.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from .codec import _BLOB as _BLOB_FRAME
from .codec import _CHUNKED as _INDEX_FRAME
from .codec import _RECORD as _RECORD_FRAME
from .codec import (
    chunk_key,
    decode_position,
    decode_record,
    encode_position,
    encode_record,
    is_chunk_key,
    read_index,
    unframe_blob,
    unframe_record,
)
from .errors import CorruptBlob, CorruptRecord, JournalError
from .store import Journal

LOST = "journal.lost"  # the tag of a record salvage could not read
_SNAPSHOT = b"snapshot:"


@dataclass(slots=True)
class SalvageReport:
    records: int = 0
    blobs: int = 0
    index_keys: int = 0
    snapshots: int = 0
    lost_records: list[tuple[int, str]] = field(default_factory=list)
    lost_blobs: list[tuple[bytes, str]] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)  # parts of the file that could not be walked


# LMDB's page layout (0.9): a 16-byte header (page number, pad, flags, lower, upper), then
# the offsets of the nodes; a leaf node is an 8-byte header (data size lo and hi, flags, key
# size), the key, then the data, or the number of the overflow pages that hold it.
_PAGE_HEADER = struct.Struct("=QHHHH")
_NODE_HEADER = struct.Struct("=HHHH")
_P_LEAF, _P_OVERFLOW, _F_BIGDATA = 0x02, 0x04, 0x01


def _scan(path: Path, page_size: int) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of every leaf page of the file, whatever tree it belonged to."""
    data = path.read_bytes()
    for start in range(0, len(data) - page_size + 1, page_size):
        pgno, _pad, flags, lower, _upper = _PAGE_HEADER.unpack_from(data, start)
        # A page names its own number: the pages inside a large value (a body) that happen
        # to look like a leaf are told apart by that.
        if pgno != start // page_size or not flags & _P_LEAF or flags & _P_OVERFLOW or lower < _PAGE_HEADER.size or lower > page_size:
            continue
        for i in range((lower - _PAGE_HEADER.size) // 2):
            (offset,) = struct.unpack_from("=H", data, start + _PAGE_HEADER.size + 2 * i)
            node = start + offset
            if offset < lower or node + _NODE_HEADER.size > start + page_size:
                continue
            lo, hi, node_flags, key_size = _NODE_HEADER.unpack_from(data, node)
            key_start = node + _NODE_HEADER.size
            key = data[key_start : key_start + key_size]
            size = lo | (hi << 16)
            if node_flags & _F_BIGDATA:
                if key_start + key_size + 8 > start + page_size:
                    continue
                (overflow,) = struct.unpack_from("=Q", data, key_start + key_size)
                value_start = overflow * page_size + _PAGE_HEADER.size
            else:
                value_start = key_start + key_size
            if value_start + size <= len(data):
                yield key, data[value_start : value_start + size]


def _incomplete(blobs: dict[bytes, bytes], bad: dict[bytes, str]) -> list[tuple[bytes, str]]:
    """Chunked blobs that lack a chunk, and chunks whose index is lost: removed from `blobs`
    (a body is salvaged whole or not at all) and reported under the blob's key."""
    lost: list[tuple[bytes, str]] = []
    indexed: set[bytes] = set()
    for key, value in list(blobs.items()):
        index = None if is_chunk_key(key) else read_index(key, value)
        if index is None:
            continue
        keys = [chunk_key(key, number) for number in range(index[0])]
        indexed.update(keys)
        missing = next((number for number, k in enumerate(keys) if k not in blobs), None)
        if missing is not None:
            why = bad.get(keys[missing], "not found in the damaged file")
            lost.append((key, f"chunk {missing + 1} of {index[0]}: {why}"))
            for k in (key, *keys):
                blobs.pop(k, None)
    for key in [k for k in blobs if is_chunk_key(k) and k not in indexed]:
        del blobs[key]
        owner = key.split(b"\x00", 1)[0]
        if owner not in blobs and owner not in bad and owner not in dict(lost):
            lost.append((owner, "its index of chunks is damaged or lost"))
    return lost


def salvage(source: str | Path, destination: str | Path) -> SalvageReport:
    source, destination = Path(source), Path(destination)
    data = source / "data.mdb"
    if not data.exists():
        raise JournalError(f"no journal at {source}")
    if destination.exists() and any(destination.iterdir()):
        raise JournalError(f"{destination} is not empty: salvage writes a fresh journal")
    try:
        with contextlib.closing(lmdb.open(str(source), readonly=True, lock=False, max_dbs=8)) as env:
            page_size = env.stat()["psize"]  # from the meta pages alone: safe on a damaged file
    except lmdb.Error:
        page_size = 4096  # the meta pages are gone too: LMDB's usual page size
    report = SalvageReport()
    records: dict[int, bytes] = {}
    bad_records: dict[int, str] = {}
    blobs: dict[bytes, bytes] = {}
    bad_blobs: dict[bytes, str] = {}
    index: dict[bytes, bytes] = {}
    snapshots: dict[bytes, bytes] = {}
    horizon, purged_before = 0, b""
    for key, value in _scan(data, page_size):
        if len(key) == 8 and value.startswith(_RECORD_FRAME) and not value.startswith(_BLOB_FRAME):
            position = decode_position(key)
            if position in records:
                continue
            try:
                decode_record(position, value)
                records[position] = value
            except CorruptRecord as exc:
                bad_records[position] = exc.reason
        elif value.startswith(_BLOB_FRAME) or value.startswith(_INDEX_FRAME):
            if key in blobs:
                continue
            try:
                if read_index(key, value) is None:
                    unframe_blob(key, value)
                blobs[key] = value
            except CorruptBlob as exc:
                bad_blobs[key] = exc.reason
        elif len(value) == 8 and key.split(b":", 1)[0] in (b"queue", b"session", b"message-id"):
            index.setdefault(key, value)
        elif key.startswith(_SNAPSHOT) and len(key) == len(_SNAPSHOT) + 8:
            snapshots.setdefault(key, value)
        elif key == b"horizon" and len(value) == 8:
            horizon = max(horizon, decode_position(value))  # it only grows: the newest copy is the largest
        elif key == b"blobs-purged-before":
            purged_before = max(purged_before, value)
    # Copies of what retention removed may linger on freed pages: it stays removed.
    records = {p: v for p, v in records.items() if p > horizon}
    snapshots = {k: v for k, v in snapshots.items() if decode_position(k[len(_SNAPSHOT) :]) >= horizon}
    report.lost_records = sorted((p, why) for p, why in bad_records.items() if p not in records and p > horizon)
    report.lost_blobs = [(k, why) for k, why in bad_blobs.items() if k not in blobs and not is_chunk_key(k)]
    report.lost_blobs += _incomplete(blobs, bad_blobs)
    report.lost_blobs.sort()
    with Journal(destination) as target, target._env.begin(write=True) as txn:
        first, last = horizon + 1, max([*records, *(p for p, _ in report.lost_records)], default=horizon)
        lost = dict(report.lost_records)
        for position in range(first, last + 1):
            found = records.get(position)
            if found is None:
                why = lost.get(position, "not found in the damaged file")
                found = encode_record(LOST, 1, {"reason": why})
                if position not in lost:
                    report.lost_records.append((position, why))
            else:
                report.records += 1
            txn.put(encode_position(position), found, db=target._events)
        for key, value in blobs.items():
            txn.put(key, value, db=target._blobs)
            report.blobs += not is_chunk_key(key)
        for key, value in index.items():
            if first <= decode_position(value) <= last:
                txn.put(key, value, db=target._index)
                report.index_keys += 1
        for key, value in snapshots.items():
            try:
                unframe_record(decode_position(key[len(_SNAPSHOT) :]), value)
            except CorruptRecord:
                report.damage.append(f"the snapshot at position {decode_position(key[len(_SNAPSHOT) :])} is corrupt: left out")
                continue
            txn.put(key, value, db=target._meta)
            report.snapshots += 1
        if horizon:
            txn.put(b"horizon", encode_position(horizon), db=target._meta)
        if purged_before:
            txn.put(b"blobs-purged-before", purged_before, db=target._meta)
    report.lost_records.sort()
    return report
