"""The record format: a CBOR map {"t": tag, "v": version, "p": payload}, keyed by position.

Positions are big-endian unsigned 64-bit integers so that LMDB's byte order is numeric order.
The payload is whatever CBOR can carry (maps, lists, text, bytes, ints, floats, None); the
journal never interprets it. Never store Python import paths here: tags are forever.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cbor2

from .errors import CorruptRecord

_U64 = struct.Struct(">Q")


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
        return cbor2.dumps({"t": tag, "v": version, "p": payload})
    except cbor2.CBOREncodeError as exc:
        raise TypeError(f"{tag} v{version}: payload cannot be encoded: {exc}") from exc


def decode_record(position: int, data: bytes) -> Record:
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise CorruptRecord(position, f"not CBOR ({exc})") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str) or not isinstance(obj.get("v"), int):
        raise CorruptRecord(position, "not a {t, v, p} map")
    return Record(position=position, tag=obj["t"], version=obj["v"], payload=obj.get("p"))
