"""vsmtp_journal: a generic append-only event journal on LMDB.

Records are CBOR maps {tag, version, payload} under big-endian u64 positions, so LMDB's key
order is append order. Message bodies live in a `blobs` sub-database, written in the same
transaction as the record that names them. This package knows nothing about mail and never
imports vsmtp: it stores tagged payloads and bytes.
"""

from __future__ import annotations

from . import doorbell
from .codec import Record, decode_record, encode_record
from .errors import CorruptBlob, CorruptRecord, JournalError, JournalFull
from .salvage import SalvageReport, salvage
from .store import Append, Journal
from .verify import Problem, Report, verify
from .writer import Commit, GroupCommitWriter, follow, follow_batches

__all__ = [
    "Append",
    "Commit",
    "CorruptBlob",
    "CorruptRecord",
    "GroupCommitWriter",
    "Journal",
    "JournalError",
    "JournalFull",
    "Problem",
    "Record",
    "Report",
    "SalvageReport",
    "decode_record",
    "doorbell",
    "encode_record",
    "follow",
    "follow_batches",
    "salvage",
    "verify",
]
