"""A message's content as it arrives (DATA or BDAT chunks), up to the size limit.

Past the limit nothing more is kept but the count goes on: RFC 1870 6.3 has the server
read to the end and then refuse. At the end the chunks become one buffer, with bare line
ends made CRLF when the configuration normalizes them (RFC 5321 2.3.8)."""

from __future__ import annotations

import re

_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")


class Body:
    def __init__(self, limit: int) -> None:
        self.limit = limit  # octets; 0: none
        self.size = 0  # octets received, kept or not
        self.too_big = False
        self.no_room = False  # dropped for want of room (memory or disk): refused at its end with 452
        self._chunks: list[bytes] = []

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.limit and self.size > self.limit:
            self.too_big, self._chunks = True, []
        elif not self.too_big and not self.no_room:
            self._chunks.append(data)

    def drop(self) -> None:
        """No room for it (net/room.py): keep counting, keep nothing, refuse it at its end."""
        self.no_room, self._chunks = True, []

    @property
    def held(self) -> int:
        """Octets held in memory now."""
        return 0 if self.too_big or self.no_room else self.size

    def content(self, *, normalize: bool = False) -> bytes:
        """Everything kept, as one buffer (the chunks are let go: one copy in memory, not
        two); `normalize`: bare CR and LF become CRLF."""
        body, self._chunks = b"".join(self._chunks), []
        return _ANY_LINE_END.sub(b"\r\n", body) if normalize else body
