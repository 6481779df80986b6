"""Is there room for one more message? On the disk for the journal (Postfix's queue_minfree)
and the bodies being received, and in memory for the part of them held there
(`limits.bodies_in_flight` per receiving process; each message holds at most
`limits.memory_per_message`, the rest is spilled to the disk as it arrives). Asked at MAIL
(with the SIZE the client declared), again when the data begins (so that a client is not let
upload a whole message to be refused at its end), and as the data arrives (a transfer that
would pass the budget is read to its end and refused). Every answer is 452 4.3.1 (RFC 3463:
insufficient system storage), and the client retries.

The disk is asked each time, not estimated from an earlier answer: room counts the bodies in
flight too, which no statvfs knows of yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from vsmtp_journal import GroupCommitWriter

from ..config import Config
from ..queue import policy


class InFlight(NamedTuple):
    """The bodies a receiving process is receiving now."""

    memory: int  # octets held in memory
    octets: int  # octets in all (in memory and spilled): the journal will need as much


class Room:
    def __init__(self, config: Config, writer: GroupCommitWriter, in_flight: Callable[[], InFlight]) -> None:
        self.config = config
        self.writer = writer
        self.in_flight = in_flight

    def for_mail(self, params: Mapping[str, str | None]) -> bool:
        needed = policy.room_needed(self.config, params)  # min_free and 1.5 times a declared SIZE
        declared = needed - self.config.journal.min_free
        flying = self.in_flight()
        if flying.memory + min(declared, self.config.limits.memory_per_message) > self.config.limits.bodies_in_flight:
            return False
        return self.writer.has_room(needed + flying.octets, max_age=0)

    def for_data(self) -> bool:
        flying = self.in_flight()
        if flying.memory >= self.config.limits.bodies_in_flight:
            return False
        return self.writer.has_room(self.config.journal.min_free + flying.octets, max_age=0)

    def while_receiving(self) -> bool:
        """Whether the bodies in flight still fit the memory budget."""
        return self.in_flight().memory <= self.config.limits.bodies_in_flight
