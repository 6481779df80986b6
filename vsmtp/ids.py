"""Identifiers: queue ids and session ids, unique across processes and restarts, sortable by time."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: ids never spell words


def _encode(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, digit = divmod(number, len(_ALPHABET))
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def new_id() -> str:
    """19 characters: microseconds since the epoch (11), then about 39 random bits (8)."""
    return _encode(time.time_ns() // 1000, 11) + _encode(secrets.randbelow(len(_ALPHABET) ** 8), 8)


def time_prefix(seconds: float) -> str:
    """The first characters of every id made at `seconds` since the epoch: ids made before
    it sort before this string."""
    return _encode(int(seconds * 1_000_000), 11)
