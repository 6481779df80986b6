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
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from .errors import CorruptBlob, CorruptRecord

_U64 = struct.Struct(">Q")
_CRC = struct.Struct(">I")
_RECORD = b"\x00"  # then the CRC, then CBOR
_BLOB = b"\x00VB1"  # then the CRC, then the body


def frame(content: bytes, *, magic: bytes = _RECORD) -> bytes:
    return magic + _CRC.pack(zlib.crc32(content)) + content


def unframe_blob(key: bytes, value: bytes | memoryview) -> bytes:
    """The body stored under `key`, its checksum checked (CorruptBlob when it fails). `value`
    may be a view of LMDB's map: the body is then copied once, after the check."""
    view = memoryview(value)
    if bytes(view[: len(_BLOB)]) != _BLOB:
        return bytes(view)  # written before framing: nothing to check it against
    head = len(_BLOB) + _CRC.size
    if len(view) < head:
        raise CorruptBlob(key, "shorter than its frame")
    content = view[head:]
    if zlib.crc32(content) != _CRC.unpack_from(view, len(_BLOB))[0]:
        raise CorruptBlob(key, f"checksum mismatch ({len(content)} octets)")
    return bytes(content)


def frame_blob(content: bytes | Sequence[bytes]) -> bytes:
    """The stored form of a blob given whole or as parts (joined once, with the frame: a
    message and the header put before it are not copied twice)."""
    if isinstance(content, bytes | bytearray | memoryview):
        return frame(bytes(content), magic=_BLOB)
    crc = 0
    for part in content:
        crc = zlib.crc32(part, crc)
    return b"".join([_BLOB, _CRC.pack(crc), *content])


def blob_size(content: bytes | Sequence[bytes]) -> int:
    return len(content) if isinstance(content, bytes | bytearray | memoryview) else sum(map(len, content))


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


def decode_record(position: int, data: bytes) -> Record:
    data = unframe_record(position, data)
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise CorruptRecord(position, f"not CBOR ({exc})") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str) or not isinstance(obj.get("v"), int):
        raise CorruptRecord(position, "not a {t, v, p} map")
    return Record(position=position, tag=obj["t"], version=obj["v"], payload=obj.get("p"))
