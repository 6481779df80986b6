"""The whole life of one message, read back from the journal: what `vsmtp trace` shows.

A message is found by its queue id or its Message-ID header through the journal's index
(written in the same transaction as message.accepted), then its session is found the same
way, and the journal is read from the session's first event to the end, keeping the
session's events and the message's. That read is a scan of everything after the session
started: fast for recent messages, slower for old ones in a long journal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vsmtp_journal import Journal, Record

from . import events as qe


@dataclass(frozen=True, slots=True)
class Trace:
    queue_id: str
    message_id: str
    trace_id: str  # the OpenTelemetry trace of the receiving session, if any
    records: tuple[Record, ...]


def locate(journal: Journal, ident: str) -> int | None:
    """The position of message.accepted for a queue id or a Message-ID (with or without <>)."""
    candidates = [b"queue:" + ident.encode()]
    bare = ident.strip().strip("<>")
    for form in (ident.strip(), f"<{bare}>", bare):
        candidates.append(b"message-id:" + form.encode("utf-8", "surrogateescape"))
    for key in candidates:
        position = journal.lookup(key)
        if position is not None:
            return position
    return None


def accepted(journal: Journal, queue_id: str) -> qe.MessageAccepted | None:
    """The message.accepted record of a queue id, through the index (None once purged)."""
    position = journal.lookup(b"queue:" + queue_id.encode())
    record = journal.get(position) if position is not None else None
    event = qe.decode(record) if record is not None else None
    return event if isinstance(event, qe.MessageAccepted) else None


def trace(journal: Journal, ident: str) -> Trace | None:
    position = locate(journal, ident)
    if position is None:
        return None
    record = journal.get(position)
    accepted = qe.decode(record) if record is not None else None
    if not isinstance(accepted, qe.MessageAccepted):
        return None
    start = journal.lookup(b"session:" + accepted.session_id.encode()) or position
    kept = []
    for r in journal.read(start - 1):
        payload = r.payload if isinstance(r.payload, dict) else {}
        ours = payload.get("queue_id") == accepted.queue_id
        # Its session's events too (but not another message accepted in the same session).
        its_session = r.tag != qe.MessageAccepted.TAG and payload.get("session_id") == accepted.session_id
        if ours or its_session:
            kept.append(r)
    # In the order things happened: records of several processes (and records that ride
    # along with a later commit, as data_received does) reach the journal out of that order.
    kept.sort(key=lambda r: (r.payload.get("at", 0.0) if isinstance(r.payload, dict) else 0.0, r.position))
    traceparent = accepted.trace_context.get("traceparent", "")
    trace_id = traceparent.split("-")[1] if traceparent.count("-") >= 3 else ""
    return Trace(queue_id=accepted.queue_id, message_id=accepted.message_id, trace_id=trace_id, records=tuple(kept))


def as_delivered(journal: Journal, ident: str) -> tuple[qe.MessageAccepted, bytes] | None:
    """message.accepted and the message as it is delivered now (after its last
    message.modified: that body and envelope); None when the journal has no such message or
    its body."""
    found = trace(journal, ident)
    if found is None:
        return None
    accepted: qe.MessageAccepted | None = None
    blob = b""
    for record in found.records:
        if record.tag in (qe.MessageAccepted.TAG, qe.MessageModified.TAG):
            event = qe.decode(record)
            if isinstance(event, qe.MessageAccepted):
                accepted, blob = event, event.blob
            elif isinstance(event, qe.MessageModified) and accepted is not None:
                blob = event.blob  # and the envelope as it is delivered now
                accepted = dataclasses.replace(accepted, reverse_path=event.reverse_path, recipients=event.recipients)
    body = journal.blob(blob) if accepted is not None else None
    return (accepted, body) if accepted is not None and body is not None else None
