"""A message's content as it arrives (DATA or BDAT chunks), up to the size limit.

The first `keep` octets are held in memory (most messages are all there); the rest goes to
a spill file (mail/spill.py) in pieces of `WRITE` octets as it comes, so that a session
holds little more than `keep` whatever the message's size. Past the size limit nothing
more is kept but the count goes on: RFC 1870 6.3 has the server read to the end and then
refuse. At the end the content becomes a Message, with bare line ends made CRLF when the
configuration normalizes them (RFC 5321 2.3.8) and a final CRLF where BDAT left none.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator

import trio

from .message import Message
from .spill import Spill

log = logging.getLogger(__name__)

_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")
WRITE = 256 * 1024  # octets gathered before a write to the spill file


class Flight:
    """What the bodies of one receiving process hold now, kept up to date by each Body as it
    changes (net/room.py asks at every MAIL, DATA and chunk: a sum over the sessions each
    time would cost as many sessions as there are)."""

    __slots__ = ("memory", "octets")

    def __init__(self) -> None:
        self.memory = 0  # octets held in memory
        self.octets = 0  # octets kept, in memory or spilled


class Body:
    def __init__(self, limit: int, *, keep: int = 0, spool: str | os.PathLike[str] | None = None, flight: Flight | None = None) -> None:
        self.limit = limit  # octets; 0: none
        self.keep = keep if spool is not None else 0  # octets held in memory before the rest spills; 0: all
        self.spool = spool
        self.size = 0  # octets received, kept or not
        self.too_big = False
        self.no_room = False  # dropped for want of room (memory or disk): refused at its end with 452
        self._chunks: list[bytes] = []  # the first octets, in memory
        self._kept = 0
        self._pending: list[bytes] = []  # octets past them, not yet in the spill file
        self._pending_size = 0
        self._spill: Spill | None = None
        self._flight = flight
        self._counted = (0, 0)  # what this body adds to the flight now: (memory, held)

    async def add(self, data: bytes) -> None:
        await self._add(data)
        self._recount()

    def _recount(self) -> None:
        if self._flight is not None:
            memory, held = self.memory, self.held
            self._flight.memory += memory - self._counted[0]
            self._flight.octets += held - self._counted[1]
            self._counted = (memory, held)

    def release(self) -> None:
        """The transaction is over: this body no longer counts in the flight."""
        if self._flight is not None:
            self._flight.memory -= self._counted[0]
            self._flight.octets -= self._counted[1]
            self._flight, self._counted = None, (0, 0)

    async def _add(self, data: bytes) -> None:
        self.size += len(data)
        if self.limit and self.size > self.limit:
            if not self.too_big:
                self.too_big = True
                self._let_go()
        elif self.too_big or self.no_room:
            return
        elif not self.keep or (self._spill is None and not self._pending and self._kept + len(data) <= self.keep):
            self._chunks.append(data)
            self._kept += len(data)
        else:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size >= WRITE:
                await self._write()

    async def _write(self) -> None:
        data, self._pending, self._pending_size = self._pending, [], 0
        try:
            if self._spill is None:
                assert self.spool is not None
                self._spill = await trio.to_thread.run_sync(Spill, self.spool)
            await trio.to_thread.run_sync(self._spill.write, data)
        except OSError as exc:  # the disk is full: read to the end, refused with 452
            log.warning("cannot spill a message being received to %s: %s", self.spool, exc)
            self.drop()

    def drop(self) -> None:
        """No room for it (net/room.py): keep counting, keep nothing, refuse it at its end."""
        self.no_room = True
        self._let_go()
        self._recount()

    def _let_go(self) -> None:
        self._chunks, self._pending, self._kept, self._pending_size = [], [], 0, 0
        self.close()

    @property
    def memory(self) -> int:
        """Octets held in memory now."""
        return self._kept + self._pending_size

    @property
    def held(self) -> int:
        """Octets kept now, in memory or in the spill file."""
        return 0 if self.too_big or self.no_room else self.size

    async def message(self, *, normalize: bool = False, final_crlf: bool = True) -> Message:
        """Everything kept, as a Message: in memory, or its first octets and the spill file
        (which the Message reads; this Body closes it). `normalize`: bare CR and LF become
        CRLF; `final_crlf`: a message that does not end with CRLF gets one (as Postfix does)."""
        if self._pending:
            await self._write()
        first, self._chunks = b"".join(self._chunks), []  # one copy in memory, not two
        spill = self._spill
        if spill is not None and normalize:
            first, spill = await trio.to_thread.run_sync(self._normalized, first, spill)
        elif normalize:
            first = _ANY_LINE_END.sub(b"\r\n", first)
        if final_crlf:
            end = spill.last(2) if spill is not None and spill.size else first[-2:]
            if (first or (spill is not None and spill.size)) and not end.endswith(b"\r\n"):
                if spill is not None and spill.size:
                    await trio.to_thread.run_sync(spill.write, [b"\r\n"])
                else:
                    first += b"\r\n"
        self._recount()
        return Message(first, spill=spill if spill is not None and spill.size else None)

    def _normalized(self, first: bytes, spill: Spill) -> tuple[bytes, Spill]:
        assert self.spool is not None
        out = normalized([first, *spill.chunks()])
        head, rest = next(out), Spill(self.spool)
        for piece in out:
            rest.write([piece])
        spill.close()
        self._spill = rest
        return head, rest

    def close(self) -> None:
        """Let the spill file go (its space returns to the disk)."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None


def normalized(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Each chunk with bare CR and LF made CRLF, a CRLF cut between two chunks kept whole:
    one output per input, then the end of a final bare CR."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        data, carry = (data[:-1], b"\r") if data.endswith(b"\r") else (data, b"")
        yield _ANY_LINE_END.sub(b"\r\n", data)
    if carry:
        yield b"\r\n"
