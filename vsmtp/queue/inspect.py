"""The queue as the operator's tools see it: the state now, one message's details, and the
events that record an operator's action (vsmtp queue ...)."""

from __future__ import annotations

import email.parser
import email.policy
import os
import time
from typing import Any

from vsmtp_journal import Journal

from . import events as qe
from .projection import fold_journal, latest_checkpoint
from .state import MessageState, QueueState

ACTIONS: dict[str, type[qe.OperatorAction]] = {
    "hold": qe.MessageHeld,
    "release": qe.MessageReleased,
    "remove": qe.MessageRemoved,
    "retry": qe.RetryRequested,
}


def current(journal: Journal) -> QueueState:
    """The queue now: the newest checkpoint and the records after it (what the daemon holds)."""
    base = latest_checkpoint(journal) or QueueState()
    return fold_journal(base, journal)


def summary(message: MessageState, *, now: float) -> dict[str, Any]:
    pending = message.pending()
    errors = {r.address: r.last_error for r in pending if r.last_error}  # each pending recipient's own
    return {
        "queue_id": message.queue_id,
        "age": round(now - message.accepted_at, 1),
        "size": message.size,
        "sender": message.reverse_path,
        "pending": [r.address for r in pending],
        "held": message.held,
        "quarantine": message.quarantine,
        "next_attempt": min((r.next_attempt for r in pending), default=0.0),
        "errors": errors,
        "last_error": list(errors.values())[-1] if errors else "",  # of a pending recipient, never of one done
    }


def details(journal: Journal, message: MessageState, *, now: float) -> dict[str, Any]:
    """Envelope, every recipient's status, and the message's headers."""
    body = journal.blob(message.blob) or b""
    head = body.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    return summary(message, now=now) | {
        "message_id": message.message_id,
        "recipients": [
            {
                "address": r.address,
                "status": r.status,
                "attempts": r.attempts,
                "next_attempt": r.next_attempt,
                "last_error": r.last_error,
                "route": r.route,  # of its last attempt ("" : not tried yet)
                "routed_by": r.routed_by,
            }
            for r in message.recipients
        ],
        "headers": [[name, str(value)] for name, value in parsed.items()],
    }


def act(journal: Journal, action: str, queue_id: str) -> int:
    """Journal an operator's action on a queued message; its position. The running daemon
    sees it within a moment (its projection follows the journal)."""
    event = ACTIONS[action](at=time.time(), queue_id=queue_id, by=f"vsmtp queue {action} (uid {os.getuid()})")
    return journal.append_batch([qe.to_append(event)])[0]


AGE_BUCKETS = ((300, "5m"), (600, "10m"), (1200, "20m"), (2400, "40m"), (4800, "80m"), (9600, "160m"), (19200, "320m"), (38400, "640m"))


def shape(state: QueueState, *, now: float) -> dict[str, Any]:
    """Pending recipients by destination domain and by age, as Postfix's qshape: a count per
    domain in each age bucket ("5m": younger than 5 minutes, ..., "older")."""
    labels = [label for _, label in AGE_BUCKETS] + ["older"]
    domains: dict[str, dict[str, int]] = {}
    for message in state.messages.values():
        age = now - message.accepted_at
        label = next((name for limit, name in AGE_BUCKETS if age < limit), "older")
        for recipient in message.pending():
            domain = recipient.address.rpartition("@")[2].lower() or "(local)"
            row = domains.setdefault(domain, dict.fromkeys(labels, 0))
            row[label] += 1
    ordered = sorted(domains.items(), key=lambda item: -sum(item[1].values()))
    return {"buckets": labels, "domains": {domain: row for domain, row in ordered}}
