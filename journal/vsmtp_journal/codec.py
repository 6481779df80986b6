"""The record format: a CBOR map {"t": tag, "v": version, "p": payload}, keyed by position,
framed with a checksum.

Positions are big-endian unsigned 64-bit integers so that LMDB's byte order is numeric order.
The payload is whatever CBOR can carry (maps, lists, text, bytes, ints, floats, None); the
journal never interprets it. Never store Python import paths here: tags are forever.

Every stored value (record, blob, snapshot) is framed: a zero byte, the CRC-32 of the
content (zlib's, 4 bytes big-endian), then the content; reading checks it, so a changed
byte is found, never delivered. A record or snapshot is CBOR, which never starts with a
zero byte before its map, so values written before framing (unframed) still read; an
unframed blob is told by the frame's magic, which a message cannot start with.

A body larger than `CHUNK` is kept in chunks of that size, each framed, under its key and
the chunk's number (`chunk_key`); the key itself then holds the index: the number of chunks
and their total size, framed too. Storing or reading one never needs the whole body in
memory at once, and a part of it given as a `Stream` (a spill file) is read chunk by chunk.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard, cast

import cbor2

from .errors import CorruptBlob, CorruptRecord

_U64 = struct.Struct(">Q")
_CRC = struct.Struct(">I")
_RECORD = b"\x00"  # then the CRC, then CBOR
_BLOB = b"\x00VB1"  # then the CRC, then the body
_CHUNKED = b"\x00VBC"  # then the CRC, then the number of chunks and their size (u32, u64)
_INDEX = struct.Struct(">IQ")
CHUNK = 1 << 20  # octets per chunk of a large body


class Stream(Protocol):
    """A part of a blob that is not held in memory (a spill file): its size, and its
    content read in pieces of at most `size` octets, from the start, each time asked."""

    def __len__(self) -> int: ...

    def chunks(self, size: int) -> Iterator[bytes]: ...


Buffer = bytes | bytearray | memoryview
Part = Buffer | Stream
_BUFFERS = (bytes, bytearray, memoryview)


def is_stream(part: object) -> TypeGuard[Stream]:
    """isinstance(part, Stream), without the runtime Protocol check (tens of microseconds a
    call: this runs for every part of every body the writer commits)."""
    return not isinstance(part, _BUFFERS) and hasattr(part, "chunks")


def _one(content: object) -> bool:
    """Whether `content` is a single part (a buffer or a Stream) rather than a list of them."""
    return isinstance(content, _BUFFERS) or is_stream(content)


def frame(content: bytes, *, magic: bytes = _RECORD) -> bytes:
    return magic + _CRC.pack(zlib.crc32(content)) + content


def checked_blob(key: bytes, value: bytes | memoryview) -> memoryview:
    """The content of one stored blob value (a body, or one chunk of it), its checksum
    checked (CorruptBlob when it fails). `value` may be a view of LMDB's map: so is the
    result, and nothing is copied."""
    view = memoryview(value)
    if bytes(view[: len(_BLOB)]) != _BLOB:
        return view  # written before framing: nothing to check it against
    head = len(_BLOB) + _CRC.size
    if len(view) < head:
        raise CorruptBlob(key, "shorter than its frame")
    content = view[head:]
    if zlib.crc32(content) != _CRC.unpack_from(view, len(_BLOB))[0]:
        raise CorruptBlob(key, f"checksum mismatch ({len(content)} octets)")
    return content


def unframe_blob(key: bytes, value: bytes | memoryview) -> bytes:
    """The body stored under `key`, checked (see checked_blob), copied once."""
    return bytes(checked_blob(key, value))


def frame_blob(content: Buffer | Sequence[Buffer]) -> bytes:
    """The stored form of a blob (or a chunk) given whole or as parts (joined once, with
    the frame: a message and the header put before it are not copied twice)."""
    if isinstance(content, bytes | bytearray | memoryview):
        return frame(bytes(content), magic=_BLOB)
    crc = 0
    for part in content:
        crc = zlib.crc32(part, crc)
    return b"".join([_BLOB, _CRC.pack(crc), *content])


def blob_size(content: Part | Sequence[Part]) -> int:
    return len(content) if _one(content) else sum(map(len, content))  # type: ignore[arg-type]


def needs_chunks(content: Part | Sequence[Part]) -> bool:
    """Whether a blob is stored in chunks: larger than one, or given (partly) as a Stream."""
    if is_stream(content):
        return True
    if not isinstance(content, _BUFFERS) and any(is_stream(part) for part in content):  # type: ignore[union-attr]
        return True
    return blob_size(content) > CHUNK


def pieces(content: Part | Sequence[Part], size: int = CHUNK) -> Iterator[list[Buffer]]:
    """The content cut into chunks of `size` octets (the last one shorter), each given as
    the pieces of the parts it is made of: views where a part is in memory, a Stream read
    in pieces, so that no more than about one chunk is copied at a time."""
    parts: Sequence[Part] = [content] if _one(content) else content  # type: ignore[list-item, assignment]
    chunk: list[Buffer] = []
    filled, made = 0, 0

    def buffers() -> Iterator[memoryview]:
        for part in parts:
            if is_stream(part):
                for piece in part.chunks(size):
                    yield memoryview(piece)
            else:
                yield memoryview(cast(Buffer, part))

    for buffer in buffers():
        while len(buffer):
            take = buffer[: size - filled]
            chunk.append(take)
            filled += len(take)
            buffer = buffer[len(take) :]
            if filled == size:
                yield chunk
                chunk, filled, made = [], 0, made + 1
    if chunk or not made:
        yield chunk


def chunk_key(key: bytes, number: int) -> bytes:
    """Where chunk `number` of the blob `key` is kept: the key, a zero byte (which no blob
    key holds, so the chunks sort right after it), the number."""
    return key + b"\x00" + struct.pack(">I", number)


def is_chunk_key(key: bytes) -> bool:
    return b"\x00" in key


def frame_index(count: int, size: int) -> bytes:
    return frame(_INDEX.pack(count, size), magic=_CHUNKED)


def read_index(key: bytes, value: bytes | memoryview) -> tuple[int, int] | None:
    """(chunks, size) when `value` is the index of a chunked blob, None when it is a blob
    itself; CorruptBlob when it is an index that fails its checksum."""
    view = memoryview(value)
    if bytes(view[: len(_CHUNKED)]) != _CHUNKED:
        return None
    content = view[len(_CHUNKED) + _CRC.size :]
    if len(content) != _INDEX.size or zlib.crc32(content) != _CRC.unpack_from(view, len(_CHUNKED))[0]:
        raise CorruptBlob(key, "its index of chunks is damaged")
    count, size = _INDEX.unpack(content)
    return int(count), int(size)


def unframe_record(position: int, value: bytes) -> bytes:
    """The CBOR of a stored record or snapshot, its checksum checked (CorruptRecord)."""
    if not value.startswith(_RECORD):
        return value  # written before framing
    head = len(_RECORD) + _CRC.size
    if len(value) < head:
        raise CorruptRecord(position, "shorter than its frame")
    content = value[head:]
    if zlib.crc32(content) != _CRC.unpack_from(value, len(_RECORD))[0]:
        raise CorruptRecord(position, "checksum mismatch")
    return content


def encode_position(position: int) -> bytes:
    return _U64.pack(position)


def decode_position(key: bytes) -> int:
    return int(_U64.unpack(key)[0])


@dataclass(frozen=True, slots=True)
class Record:
    """One journal record as read back: where it is, what it is, and its payload."""

    position: int
    tag: str
    version: int
    payload: Any


def encode_record(tag: str, version: int, payload: Any) -> bytes:
    """Raises TypeError for a payload CBOR cannot carry: that is the caller's bug."""
    try:
        return frame(cbor2.dumps({"t": tag, "v": version, "p": payload}))
    except cbor2.CBOREncodeError as exc:
        raise TypeError(f"{tag} v{version}: payload cannot be encoded: {exc}") from exc


_TAG_KEY = b"\xa3\x61t"  # a map of three entries, the first key the text "t"


def tag_of(content: bytes) -> bytes | None:
    """The tag of a record's CBOR (checksum already checked), as UTF-8, read from its first
    bytes without decoding the rest: encode_record writes the map with "t" first. None when
    the record is laid out otherwise (whoever asks then decodes it whole)."""
    if not content.startswith(_TAG_KEY) or len(content) < 5:
        return None
    head = content[3]
    if 0x60 <= head < 0x78:  # a text string of fewer than 24 octets: its length in the head
        return content[4 : 4 + head - 0x60]
    if head == 0x78:  # up to 255 octets: the length in the next byte
        return content[5 : 5 + content[4]]
    return None


def decode_record(position: int, data: bytes) -> Record:
    """The record stored at `position`, its checksum checked (CorruptRecord)."""
    return _decoded(position, unframe_record(position, data))


def decode_tagged(position: int, data: bytes, tags: frozenset[bytes]) -> Record | None:
    """As decode_record, but None for a record whose tag (UTF-8) is not among `tags`: its
    checksum is checked, its payload not decoded."""
    content = unframe_record(position, data)
    tag = tag_of(content)
    if tag is not None and tag not in tags:
        return None
    record = _decoded(position, content)
    return record if record.tag.encode() in tags else None  # laid out otherwise: decoded to know


def _decoded(position: int, data: bytes) -> Record:
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise CorruptRecord(position, f"not CBOR ({exc})") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str) or not isinstance(obj.get("v"), int):
        raise CorruptRecord(position, "not a {t, v, p} map")
    return Record(position=position, tag=obj["t"], version=obj["v"], payload=obj.get("p"))
