"""The part of a large message that is not held in memory while it arrives: an unlinked
file in the journal's directory (on its filesystem, so the disk check counts it; with no
name, so nothing is left behind by a crash). Written in order, read back in pieces with
pread (no map: its pages never count as the process's memory), closed with its message.

A Spill is what the journal stores as a Stream (vsmtp_journal.codec): it is copied into the
journal chunk by chunk, never joined in memory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

PIECE = 1 << 20  # octets read at a time


class Spill:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._file = tempfile.TemporaryFile(dir=directory, prefix=".spill-", buffering=0)  # noqa: SIM115 - lives as long as its message
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def write(self, data: Sequence[bytes]) -> None:
        """Append `data` (blocking: call it in a worker thread). OSError (ENOSPC) goes to the caller."""
        views = [memoryview(d) for d in data if d]
        while views:
            written = os.pwritev(self._file.fileno(), views, self.size)
            self.size += written
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = views[0][written:]

    def chunks(self, size: int = PIECE) -> Iterator[bytes]:
        """The content from the start, in pieces of at most `size` octets."""
        offset = 0
        while offset < self.size:
            data = os.pread(self._file.fileno(), min(size, self.size - offset), offset)
            if not data:
                raise OSError(f"the spill file ended at {offset} of {self.size} octets")
            yield data
            offset += len(data)

    def read(self) -> bytes:
        """All of it, in memory: for what needs the whole message (a rule that parses it)."""
        return b"".join(self.chunks())

    def last(self, count: int) -> bytes:
        start = max(0, self.size - count)
        return os.pread(self._file.fileno(), self.size - start, start)

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed


def joined(parts: Sequence[bytes | Spill]) -> bytes:
    """A message given in parts (some perhaps spilled), in memory as one buffer."""
    return b"".join(part.read() if isinstance(part, Spill) else part for part in parts)
