"""Integrity check of a journal: positions contiguous from 1 (or from the retention horizon
on), every record decodes and matches its checksum, every blob a record refers to is there
(unless retention removed it on purpose), and every blob matches its checksum. Damaged
pages are reported, not a traceback. Read-only; safe while the daemon runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import lmdb

from .codec import Record, decode_record
from .errors import CorruptBlob, CorruptRecord
from .store import Journal


@dataclass(frozen=True, slots=True)
class Problem:
    position: int  # where; 0 for the journal as a whole
    what: str

    def __str__(self) -> str:
        return f"position {self.position}: {self.what}" if self.position else self.what


@dataclass(frozen=True, slots=True)
class Report:
    records: int
    blobs_checked: int
    problems: tuple[Problem, ...]

    @property
    def clean(self) -> bool:
        return not self.problems


def verify(
    journal: Journal,
    *,
    blobs_of: Callable[[Record], Iterable[bytes]] = lambda record: (),
    check_record: Callable[[Record], str | None] = lambda record: None,
    max_problems: int = 1000,
) -> Report:
    """Walk the whole journal. `blobs_of` names the blob keys a record refers to;
    `check_record` returns what is wrong with a decoded record, or None."""
    problems: list[Problem] = []
    horizon = journal.horizon()
    purged_before = journal.blobs_purged_before()
    try:
        if horizon and journal.snapshot(horizon) is None:
            problems.append(Problem(horizon, "records up to here were purged, but the snapshot that replaces them is missing"))
    except CorruptRecord as exc:
        problems.append(Problem(horizon, f"the snapshot at the retention horizon does not decode: {exc.reason}"))
    expected, records, blobs = horizon + 1, 0, 0
    corrupt: set[bytes] = set()
    try:
        for position, data in journal.read_raw(horizon):
            if len(problems) >= max_problems:
                problems.append(Problem(0, f"stopped after {max_problems} problems"))
                break
            records += 1
            if position != expected:
                gap = f"positions {expected} to {position - 1} are missing" if position > expected else "out of order"
                problems.append(Problem(position, gap))
            expected = position + 1
            try:
                record = decode_record(position, data)
            except CorruptRecord as exc:
                problems.append(Problem(position, f"does not decode: {exc.reason}"))
                continue
            wrong = check_record(record)
            if wrong:
                problems.append(Problem(position, f"{record.tag} v{record.version}: {wrong}"))
            for key in blobs_of(record):
                blobs += 1
                try:
                    present = journal.check_blob(key)
                except CorruptBlob as exc:
                    corrupt.add(key)
                    problems.append(Problem(position, f"{record.tag} refers to blob {_name(key)}, which is corrupt: {exc.reason}"))
                    continue
                if not present and not key < purged_before:
                    problems.append(Problem(position, f"{record.tag} refers to blob {_name(key)}, which is missing"))
        for key in journal.blob_keys():  # the bodies no record names any more, too
            if key in corrupt:
                continue
            try:
                journal.check_blob(key)
            except CorruptBlob as exc:
                problems.append(Problem(0, f"blob {_name(key)} is corrupt: {exc.reason}"))
    except lmdb.Error as exc:
        problems.append(Problem(0, f"the journal's pages are damaged ({exc}); run `vsmtp journal salvage DIRECTORY`"))
    return Report(records=records, blobs_checked=blobs, problems=tuple(problems))


def _name(key: bytes) -> str:
    return repr(key.decode(errors="replace"))
