"""Exceptions raised by the journal.

JournalError            anything the journal cannot do
├── JournalFull         the disk or the configured maximum size is reached: try later
├── CorruptRecord       a stored record does not decode, or fails its checksum (names its position)
└── CorruptBlob         a stored body fails its checksum (names its key)
"""

from __future__ import annotations


class JournalError(Exception):
    """The journal could not do what was asked."""


class JournalFull(JournalError):
    """No room to append: the disk is full or the configured maximum size is reached."""


class CorruptRecord(JournalError):
    """A stored record could not be decoded."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"record at position {position} is corrupt: {reason}")
        self.position = position
        self.reason = reason


class CorruptBlob(JournalError):
    """A stored blob (a message body) does not match its checksum."""

    def __init__(self, key: bytes, reason: str) -> None:
        super().__init__(f"blob {key.decode(errors='replace')!r} is corrupt: {reason}")
        self.key = key
        self.reason = reason
