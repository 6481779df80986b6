"""The LMDB store: synchronous, thread-safe append of batches and reads by position.

One environment holds four named databases: `events` (position -> record), `blobs`
(key -> bytes), `index` (a lookup key -> the position of the record it names, e.g. a queue
id or a Message-ID) and `meta`: snapshots of a projection ("snapshot:" + position -> bytes
the caller encoded) and the retention horizon (records up to it have been purged). A batch of appends is one
write transaction, committed and synced before append_batch returns: that is the unit of
durability the writer (writer.py) builds group commit on. LMDB's writer lock serialises
writers across processes, so positions stay unique and gapless even with several processes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import cbor2
import lmdb

from .codec import (
    Part,
    Record,
    checked_blob,
    chunk_key,
    decode_position,
    decode_record,
    decode_tagged,
    encode_position,
    encode_record,
    frame,
    frame_blob,
    frame_index,
    is_chunk_key,
    needs_chunks,
    pieces,
    read_index,
    unframe_record,
)
from .errors import CorruptBlob, CorruptRecord, JournalError, JournalFull

SALVAGE_HINT = "Run `vsmtp journal verify` to see the damage, and `vsmtp journal salvage DIRECTORY` to copy what is readable"
DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB of address space to start with; the file itself is sparse
_EVENTS = b"events"
_BLOBS = b"blobs"
_META = b"meta"
_INDEX = b"index"
_SNAPSHOT = b"snapshot:"
_HORIZON = b"horizon"
_BLOBS_PURGED = b"blobs-purged-before"


@dataclass(frozen=True, slots=True)
class Append:
    """One record to append, with the blobs to store and the index keys that will find it,
    all in the same transaction."""

    tag: str
    version: int
    payload: Any
    blobs: Mapping[bytes, Part | Sequence[Part]] = field(default_factory=dict)  # a blob whole, or in parts to join
    index: Sequence[bytes] = ()  # keys whose value becomes this record's position


PAGES_MAX_AGE = 0.5  # seconds: how old room()'s count of the pages in use may be


class Journal:
    """An LMDB environment used as an append-only log.

    Positions start at 1; position 0 means "before the first record".
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.max_map_size = max_map_size
        self._pages: tuple[float, int, int] | None = None  # (when, bytes of pages in use, file size): room()
        if max_map_size is not None:
            map_size = min(map_size, max_map_size)
        if readonly:
            if not (self.path / "data.mdb").exists():
                raise JournalError(f"no journal at {self.path} (expected {self.path / 'data.mdb'})")
        else:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=8,
                mode=0o600,  # journal files readable by the service user only
                readonly=readonly,
                sync=True,
                metasync=True,
                readahead=False,
                max_spare_txns=4,
            )
        except lmdb.Error as exc:
            raise JournalError(f"cannot open journal at {self.path}: {exc}. {SALVAGE_HINT}") from exc
        self._check_size()
        # Without txn=, py-lmdb opens each handle in a transaction it commits, so the handles
        # stay valid (a handle opened in an aborted read transaction would be discarded).
        for attempt in range(3):
            try:
                self._events = self._env.open_db(_EVENTS, create=not readonly)
                self._blobs = self._env.open_db(_BLOBS, create=not readonly)
                self._meta = self._env.open_db(_META, create=not readonly)
                self._index = self._open_optional(_INDEX, readonly)
                break
            except lmdb.MapResizedError:
                if attempt == 2:
                    raise
                self._env.set_mapsize(0)  # another process grew the map as we opened: adopt it
            except lmdb.NotFoundError as exc:
                self._env.close()
                raise JournalError(f"{self.path} is not a vsmtp journal (no events database)") from exc

    def _check_size(self) -> None:
        """A data file shorter than the pages its meta page counts was truncated: reading
        those pages would kill the process with SIGBUS, so refuse it now, with a message."""
        expected = (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]
        try:
            actual = (self.path / "data.mdb").stat().st_size
        except OSError as exc:
            self._env.close()
            raise JournalError(f"cannot read {self.path / 'data.mdb'}: {exc.strerror}") from exc
        if actual < expected:
            self._env.close()
            raise JournalError(f"{self.path / 'data.mdb'} is truncated: {actual} bytes where its pages need {expected}. {SALVAGE_HINT}")

    # -- writing ---------------------------------------------------------------------------

    def append_batch(self, appends: Sequence[Append]) -> list[int]:
        """Append records (and their blobs) in one synced transaction; return their positions."""
        if self.readonly:
            raise JournalError("journal opened read-only")
        encoded = [encode_record(a.tag, a.version, a.payload) for a in appends]
        while True:
            try:
                positions = self._write(appends, encoded)
                if self.max_map_size is not None:
                    self._pages = None  # the pages in use count against the maximum: counted afresh
                return positions
            except lmdb.MapFullError:
                self._grow()
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)  # another process grew the map: adopt its size
            except lmdb.Error as exc:
                if _is_enospc(exc):
                    raise JournalFull(f"no space left for the journal at {self.path}") from exc
                raise JournalError(f"append failed: {exc}") from exc

    def append(self, tag: str, version: int, payload: Any, blobs: Mapping[bytes, bytes] | None = None) -> int:
        return self.append_batch([Append(tag, version, payload, blobs or {})])[0]

    def _write(self, appends: Sequence[Append], encoded: list[bytes]) -> list[int]:
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._events)
            # An empty events database after a purge of everything goes on from the horizon.
            last = decode_position(cursor.key()) if cursor.last() else self._horizon_in(txn)
            positions = []
            for offset, (a, data) in enumerate(zip(appends, encoded, strict=True), start=1):
                position = last + offset
                for key, body in a.blobs.items():
                    self._put_blob(txn, key, body)
                for key in a.index:
                    txn.put(key, encode_position(position), db=self._index)
                # append=True: the key is past the last one, so LMDB appends without a search.
                if not cursor.put(encode_position(position), data, append=True):
                    raise JournalError(f"position {position} already exists")
                positions.append(position)
            return positions

    def _put_blob(self, txn: lmdb.Transaction, key: bytes, body: Part | Sequence[Part]) -> None:
        """One blob, whole or (when large, or given as a Stream) in chunks under an index."""
        if is_chunk_key(key):
            raise JournalError(f"a blob key cannot hold a zero byte: {key!r}")
        self._delete_chunks(txn, key)  # a blob stored again: none of its old chunks may linger
        if not needs_chunks(body):
            txn.put(key, frame_blob(cast(Sequence[bytes], body)), db=self._blobs)
            return
        count = size = 0
        for chunk in pieces(body):
            txn.put(chunk_key(key, count), frame_blob(chunk), db=self._blobs)
            count, size = count + 1, size + sum(map(len, chunk))
        txn.put(key, frame_index(count, size), db=self._blobs)

    def _delete_chunks(self, txn: lmdb.Transaction, key: bytes) -> int:
        cursor, first, deleted = txn.cursor(db=self._blobs), chunk_key(key, 0)[:-4], 0
        if cursor.set_range(first):
            while bytes(cursor.key()).startswith(first):
                deleted += 1
                if not cursor.delete():
                    break
        return deleted

    # -- snapshots and retention -----------------------------------------------------------

    def write_snapshot(self, position: int, payload: Any) -> None:
        """Store a projection's state as of `position` (any CBOR payload), in one synced transaction."""
        self._write_meta({_SNAPSHOT + encode_position(position): frame(cbor2.dumps(payload))})

    def snapshots(self) -> list[int]:
        """Positions that have a snapshot, oldest first."""
        with self._begin_read() as txn:
            cursor = txn.cursor(db=self._meta)
            found = []
            if cursor.set_range(_SNAPSHOT):
                for key in cursor.iternext(values=False):
                    if not bytes(key).startswith(_SNAPSHOT):
                        break
                    found.append(decode_position(bytes(key)[len(_SNAPSHOT) :]))
            return found

    def snapshot(self, position: int) -> Any:
        """The payload stored at `position`, or None. Raises CorruptRecord if it does not decode."""
        with self._begin_read() as txn:
            data = txn.get(_SNAPSHOT + encode_position(position), db=self._meta)
        if data is None:
            return None
        content = unframe_record(position, cast(bytes, data))
        try:
            return cbor2.loads(content)
        except (cbor2.CBORDecodeError, ValueError) as exc:
            raise CorruptRecord(position, f"snapshot does not decode: {exc}") from exc

    def horizon(self) -> int:
        """The last purged position: records after it are all kept (0: nothing purged)."""
        with self._begin_read() as txn:
            value = txn.get(_HORIZON, db=self._meta)
        return 0 if value is None else decode_position(cast(bytes, value))

    def blobs_purged_before(self) -> bytes:
        """Blob keys sorting before this may have been purged on purpose (b"": none)."""
        with self._begin_read() as txn:
            return cast(bytes, txn.get(_BLOBS_PURGED, db=self._meta) or b"")

    def blob_keys(self, *, before: bytes | None = None) -> Iterator[bytes]:
        """Blob keys in key order (a snapshot), up to `before` if given."""
        with self._begin_read() as txn:
            cursor = txn.cursor(db=self._blobs)
            for key in cursor.iternext(values=False):
                if before is not None and bytes(key) >= before:
                    return
                if not is_chunk_key(bytes(key)):  # a chunk belongs to the blob before it
                    yield bytes(key)

    def purge(self, *, blobs: Sequence[bytes] = (), blobs_before: bytes = b"", through: int = 0) -> tuple[int, int]:
        """Delete `blobs`, and every record up to position `through` with the index entries
        and snapshots older than it, in one synced transaction. `through` must have a
        snapshot: it becomes the state a rebuild starts from. Returns (blobs, records) deleted.
        LMDB puts the freed pages on its free list and reuses them for new writes."""
        if self.readonly:
            raise JournalError("journal opened read-only")
        if through and through not in self.snapshots():
            raise JournalError(f"cannot purge through position {through}: no snapshot there")
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    removed_blobs = 0
                    for key in blobs:
                        self._delete_chunks(txn, key)
                        removed_blobs += bool(txn.delete(key, db=self._blobs))
                    if blobs_before > (txn.get(_BLOBS_PURGED, db=self._meta) or b""):
                        txn.put(_BLOBS_PURGED, blobs_before, db=self._meta)
                    removed_records = 0
                    if through > self._horizon_in(txn):
                        removed_records = self._purge_records(txn, through)
                    return removed_blobs, removed_records
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
            except lmdb.MapFullError:
                self._grow()

    def _horizon_in(self, txn: lmdb.Transaction) -> int:
        value = txn.get(_HORIZON, db=self._meta)
        return 0 if value is None else decode_position(cast(bytes, value))

    def _purge_records(self, txn: lmdb.Transaction, through: int) -> int:
        end = encode_position(through)
        removed = 0
        cursor = txn.cursor(db=self._events)
        if cursor.first():
            while bytes(cursor.key()) <= end:
                removed += 1
                if not cursor.delete():
                    break
        if self._index is not None:  # entries naming purged records would lead nowhere
            cursor = txn.cursor(db=self._index)
            if cursor.first():
                while True:
                    if bytes(cursor.value()) <= end:
                        if not cursor.delete():
                            break
                    elif not cursor.next():
                        break
        cursor = txn.cursor(db=self._meta)
        if cursor.set_range(_SNAPSHOT):
            while bytes(cursor.key()).startswith(_SNAPSHOT) and bytes(cursor.key())[len(_SNAPSHOT) :] < end:
                if not cursor.delete():
                    break
        txn.put(_HORIZON, end, db=self._meta)
        return removed

    def _write_meta(self, items: Mapping[bytes, bytes]) -> None:
        if self.readonly:
            raise JournalError("journal opened read-only")
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in items.items():
                        txn.put(key, value, db=self._meta)
                return
            except lmdb.MapResizedError:
                self._env.set_mapsize(0)
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                if _is_enospc(exc):
                    raise JournalFull(f"no space left for the journal at {self.path}") from exc
                raise JournalError(f"cannot write to the journal: {exc}") from exc

    def _grow(self) -> None:
        current = self._env.info()["map_size"]
        new = current * 2
        if self.max_map_size is not None and new > self.max_map_size:
            if current >= self.max_map_size:
                raise JournalFull(f"journal reached its maximum size ({self.max_map_size} bytes)")
            new = self.max_map_size
        self._env.set_mapsize(new)

    # -- reading ---------------------------------------------------------------------------

    def _begin_read(self) -> lmdb.Transaction:
        try:
            return self._env.begin(buffers=False)
        except lmdb.MapResizedError:
            # Another process grew the map: adopt its size and try again.
            self._env.set_mapsize(0)
            return self._env.begin(buffers=False)

    def last_position(self) -> int:
        with self._begin_read() as txn:
            cursor = txn.cursor(db=self._events)
            return decode_position(cast(bytes, cursor.key())) if cursor.last() else self._horizon_in(txn)

    def get(self, position: int) -> Record | None:
        with self._begin_read() as txn:
            data = txn.get(encode_position(position), db=self._events)
        return None if data is None else decode_record(position, cast(bytes, data))

    def read(self, after: int = 0, *, limit: int | None = None) -> Iterator[Record]:
        """Records with position > after, in order, at most `limit` of them.

        The read transaction is a consistent snapshot; it is held only while this iterates.
        """
        with contextlib.closing(self.read_raw(after, limit=limit)) as raw:
            for position, data in raw:
                yield decode_record(position, data)

    def read_batch(self, after: int = 0, *, limit: int, tags: frozenset[str] | None = None) -> tuple[list[Record], int]:
        """At most `limit` records after `after`, and the position of the last one read (`after`
        if there was none). With `tags`, only the records with those tags are returned: the
        others are checked against their checksums but their payloads are not decoded (a
        follower that reacts to a few kinds of record skips the rest for a fraction of the cost)."""
        wanted = None if tags is None else frozenset(tag.encode() for tag in tags)
        records: list[Record] = []
        last = after
        with contextlib.closing(self.read_raw(after, limit=limit)) as raw:
            for last, data in raw:
                record = decode_record(last, data) if wanted is None else decode_tagged(last, data, wanted)
                if record is not None:
                    records.append(record)
        return records, last

    def read_raw(self, after: int = 0, *, limit: int | None = None) -> Generator[tuple[int, bytes], None, None]:
        """(position, stored record) after `after`, at most `limit` of them, undecoded: what
        the readers above decode, and what checking a damaged journal looks at."""
        with self._begin_read() as txn:
            cursor = txn.cursor(db=self._events)
            if not cursor.set_range(encode_position(after + 1)):
                return
            for count, (key, data) in enumerate(cursor):
                if limit is not None and count >= limit:
                    return
                yield decode_position(cast(bytes, key)), cast(bytes, data)

    def lookup(self, key: bytes) -> int | None:
        """The position an index key names (see Append.index), or None."""
        if self._index is None:
            return None
        with self._begin_read() as txn:
            value = txn.get(key, db=self._index)
        return None if value is None else decode_position(cast(bytes, value))

    def has_blob(self, key: bytes) -> bool:
        with self._begin_read() as txn:
            cursor = txn.cursor(db=self._blobs)
            return bool(cursor.set_key(key))

    def stats(self) -> dict[str, int]:
        """Sizes: the file, the map, pages in use, records and blobs."""
        info, stat = self._env.info(), self._env.stat()
        with self._begin_read() as txn:
            records = txn.stat(self._events)["entries"]
            blobs = txn.stat(self._blobs)["entries"]
        data = self.path / "data.mdb"
        return {
            "file_bytes": data.stat().st_size if data.exists() else 0,
            "map_bytes": info["map_size"],
            "used_bytes": (info["last_pgno"] + 1) * stat["psize"],
            "records": records,
            "blobs": blobs,
        }

    def room(self) -> int:
        """Bytes the journal can still take, estimated: free pages in the file plus the
        filesystem's free space, and no more than `max_map_size` minus the pages in use.

        LMDB reuses the pages that deleted records freed (retention), so the pages in use,
        not the file's size, are what counts against the maximum. The filesystem's free space
        is read at every call; the pages in use, which take LMDB's statistics in a read
        transaction, are counted at most every PAGES_MAX_AGE seconds (pages taken inside the
        file since then use no disk, so the disk's figure stays exact), and after each of this
        process's commits when the journal has a maximum size."""
        now = time.monotonic()
        if self._pages is None or now - self._pages[0] > PAGES_MAX_AGE:
            self._pages = (now, *self._pages_in_use())
        _, used, file_bytes = self._pages
        fs = os.statvfs(self.path)
        room = fs.f_bavail * fs.f_frsize + max(file_bytes - used, 0)
        if self.max_map_size is not None:
            room = min(room, self.max_map_size - used)
        return max(room, 0)

    def _pages_in_use(self) -> tuple[int, int]:
        """The bytes of the pages in use, and the data file's size."""
        stat = self._env.stat()
        page = stat["psize"]
        with self._begin_read() as txn:
            used = sum(
                txn.stat(db)["branch_pages"] + txn.stat(db)["leaf_pages"] + txn.stat(db)["overflow_pages"]
                for db in (self._events, self._blobs, self._meta, self._index)
                if db is not None
            )
        used = (used + stat["branch_pages"] + stat["leaf_pages"] + 4) * page  # + the main db and meta pages
        try:
            file_bytes = (self.path / "data.mdb").stat().st_size
        except FileNotFoundError:
            file_bytes = 0
        return used, file_bytes

    def _open_optional(self, name: bytes, readonly: bool) -> Any:
        """A database that older journals may lack: created when writing, None when reading one without it."""
        try:
            return self._env.open_db(name, create=not readonly)
        except lmdb.NotFoundError:
            return None

    def blob(self, key: bytes) -> bytes | None:
        """The body stored under `key` (None: there is none), its checksum checked: a body
        that fails it raises CorruptBlob, never comes back altered. Copied once, whole: for
        a large body, `blob_chunks` reads it a chunk at a time."""
        with self._blob_views(key) as parts:
            return None if parts is None else b"".join(parts)

    def blob_chunks(self, key: bytes) -> Iterator[memoryview]:
        """The body under `key` a chunk at a time (CHUNK octets), each copied out of LMDB in
        a transaction of its own and checked (CorruptBlob); nothing if there is none. For
        writing a large body out (a Maildir file) holding one chunk in memory, not the body."""
        with self._begin_read() as txn:
            value = txn.get(key, db=self._blobs)
        if value is None:
            return
        index = read_index(key, value)
        if index is None:
            yield checked_blob(key, value)
            return
        count, size = index
        for number in range(count):
            with self._begin_read() as txn:
                chunk = txn.get(chunk_key(key, number), db=self._blobs)
            if chunk is None:
                raise CorruptBlob(key, f"chunk {number + 1} of {count} is missing")
            try:
                content = checked_blob(key, chunk)
            except CorruptBlob as exc:
                raise CorruptBlob(key, f"chunk {number + 1} of {count}: {exc.reason}") from exc
            size -= len(content)
            if size < 0 or (number == count - 1 and size):
                raise CorruptBlob(key, "its chunks do not hold the size its index gives")
            yield content

    @contextlib.contextmanager
    def _blob_views(self, key: bytes) -> Iterator[list[memoryview] | None]:
        """The body under `key` as views of LMDB's map (one per chunk), every checksum
        checked (CorruptBlob). Valid only inside the `with`, and to be held briefly: the map
        must not be grown under them (see `_grow`)."""
        try:
            txn = self._env.begin(buffers=True)
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            txn = self._env.begin(buffers=True)
        with txn:
            yield self._parts_in(txn, key)

    def check_blob(self, key: bytes) -> bool:
        """Whether the body under `key` is there; CorruptBlob when it is damaged (checked
        in place, nothing copied)."""
        with self._blob_views(key) as parts:
            return parts is not None

    def _parts_in(self, txn: lmdb.Transaction, key: bytes) -> list[memoryview] | None:
        value = txn.get(key, db=self._blobs)
        if value is None:
            return None
        index = read_index(key, value)
        if index is None:
            return [checked_blob(key, value)]
        count, size = index
        parts = []
        for number in range(count):
            chunk = txn.get(chunk_key(key, number), db=self._blobs)
            if chunk is None:
                raise CorruptBlob(key, f"chunk {number + 1} of {count} is missing")
            try:
                parts.append(checked_blob(key, chunk))
            except CorruptBlob as exc:
                raise CorruptBlob(key, f"chunk {number + 1} of {count}: {exc.reason}") from exc
        if sum(map(len, parts)) != size:
            raise CorruptBlob(key, f"its chunks hold {sum(map(len, parts))} octets, not {size}")
        return parts

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_enospc(exc: lmdb.Error) -> bool:
    return isinstance(exc, lmdb.DiskError) or "No space left" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC
