"""Open sessions, in all and per client address, counted across the receiving processes.

Postfix asks its anvil service; vsmtp shares a small table instead. The supervisor creates
it in memory (memfd) and hands it to every receiving process; process i owns row i and is
the only one to write it: a session that opens adds 1 to its total and to the slot of its
client's address, and takes it back when it ends. Reading sums every row, so a limit holds
across processes. A process that restarts clears its own row first: the sessions of a
process that died are forgotten with it.

Addresses share a slot when their hashes collide (65,536 slots): then each counts the
other's sessions too, which errs on the side of refusing, never of letting more in.
"""

from __future__ import annotations

import mmap
import os
import zlib

SLOTS = 1 << 16  # per row; slot 0 is the row's total, the address slots follow
_ITEM = 4  # int32


class ConnectionCounts:
    def __init__(self, fd: int | None = None, *, rows: int = 1, row: int = 0) -> None:
        """`fd`: a table made by `create` (None: a private one, for a single process)."""
        if fd is None:
            fd = create(rows)
        self.fd = fd
        self.rows = rows
        self.row = row
        self._map = mmap.mmap(fd, rows * SLOTS * _ITEM)
        self._cells = memoryview(self._map).cast("i")
        self.clear_own()

    def clear_own(self) -> None:
        start = self.row * SLOTS
        self._cells[start : start + SLOTS] = memoryview(bytes(SLOTS * _ITEM)).cast("i")

    @staticmethod
    def _slot(host: str) -> int:
        return 1 + zlib.crc32(host.encode()) % (SLOTS - 1)

    def total(self) -> int:
        return sum(self._cells[::SLOTS])  # each row's slot 0 (asked at every read of every session)

    def of(self, host: str) -> int:
        slot = self._slot(host)
        return sum(self._cells[r * SLOTS + slot] for r in range(self.rows))

    def add(self, host: str, delta: int = 1, *, total: bool = True) -> None:
        """`delta` sessions more for `host` (any key: net/anvil.py counts networks too, with
        total=False, so that a session counts once in the total)."""
        base = self.row * SLOTS
        if total:
            self._cells[base] += delta
        self._cells[base + self._slot(host)] += delta


def create(rows: int) -> int:
    """A zeroed table for `rows` processes, as an inheritable memfd."""
    fd = os.memfd_create("vsmtp-connections", 0)
    os.ftruncate(fd, rows * SLOTS * _ITEM)
    return fd
