"""Identifiers: queue ids and session ids, unique across processes and restarts, sortable by time."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # no vowels: ids never spell words
_BASE = len(_ALPHABET)
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # two digits a step: half the divisions
_RANDOM_SPAN = _BASE**8  # the 8 random digits: about 39 bits


def _encode(number: int, width: int) -> str:
    """`number` in base 31, `width` digits, most significant first."""
    out = []
    if width % 2:
        number, digit = divmod(number, _BASE)
        out.append(_ALPHABET[digit])
    for _ in range(width // 2):
        number, pair = divmod(number, _BASE * _BASE)
        out.append(_PAIRS[pair])
    return "".join(reversed(out))


def new_id() -> str:
    """19 characters: microseconds since the epoch (11), then about 39 random bits (8)."""
    # One number, one encoding: the random part is its last 8 digits. 48 random bits reduced
    # modulo 31**8: the slight bias does not matter for an identifier that needs only to be unique.
    random = int.from_bytes(os.urandom(6), "big") % _RANDOM_SPAN
    return _encode((time.time_ns() // 1000) * _RANDOM_SPAN + random, 19)


def time_prefix(seconds: float) -> str:
    """The first characters of every id made at `seconds` since the epoch: ids made before
    it sort before this string."""
    return _encode(int(seconds * 1_000_000), 11)
