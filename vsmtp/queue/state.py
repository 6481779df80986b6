"""QueueState and apply(state, event) -> state: a pure fold of the journal.

The state holds the messages that still have work to do, each with the status of every
recipient. A message whose recipients are all final leaves the state (its history stays in
the journal). Maps are persistent (immutables.Map), so every apply returns a new state in
O(log n) and replaying the journal from position 0 gives an equal state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from immutables import Map
from vsmtp_journal import Record

from . import events as qe

Status = Literal["pending", "delivered", "failed"]
CORRUPT = "corrupt"  # the quarantine of messages whose body failed its checksum


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientState:
    address: str
    status: Status = "pending"
    attempts: int = 0
    next_attempt: float = 0.0  # seconds since the epoch; 0 means now
    last_error: str = ""  # the line operators read (delivery.deferred and .failed's reason)
    in_doubt: bool = False  # its data went to a remote host without a final answer (delivery.started)
    notify: str = ""  # its NOTIFY parameter (RFC 3461), upper case; "" when not given
    # The last failed attempt as data (the v2 delivery events): what notices are built from.
    last_status: str = ""  # RFC 3463
    last_code: int = 0  # the reply code of the server that answered (0: none did)
    last_host: str = ""  # the next hop that answered
    route: str = ""  # the route of its last attempt (delivery events' route), and why
    routed_by: str = ""

    def wants(self, kind: str) -> bool:
        """Whether this recipient asked to be reported on `kind` (SUCCESS, FAILURE or DELAY).
        Without NOTIFY the sender hears of failures and delays (RFC 3461 4.1)."""
        asked = self.notify.split(",") if self.notify else ["FAILURE", "DELAY"]
        return kind in asked and "NEVER" not in asked


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageState:
    queue_id: str
    reverse_path: str
    blob: bytes
    size: int
    accepted_at: float
    recipients: tuple[RecipientState, ...]  # in RCPT order; a few, so a tuple is cheapest
    message_id: str = ""
    held: bool = False  # an operator put it on hold: not delivered until released
    delay_warned: bool = False  # the sender was told it is delayed (message.delay_warned)
    quarantine: str = ""  # the quarantine it is held in (message.quarantined), until released
    postq: bool = False  # the post-queue stage has yet to run (until message.filtered)
    traceparent: str = ""  # the W3C context of the message's span, for the delivery spans (message.accepted)
    trace_continued: bool = False  # ... which are its children rather than linked to it

    @property
    def done(self) -> bool:
        return all(r.status != "pending" for r in self.recipients)

    @property
    def bounce_due(self) -> bool:
        """Every recipient is final, and the sender (not <>) is owed a report: some failed, or
        one delivered asked for NOTIFY=SUCCESS."""
        return self.done and bool(self.reverse_path) and _to_report(self.recipients)

    def pending(self) -> list[RecipientState]:
        return [r for r in self.recipients if r.status == "pending"]

    def recipient(self, address: str) -> RecipientState | None:
        return next((r for r in self.recipients if r.address == address), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueState:
    position: int = 0  # the last journal position folded in
    messages: Map[str, MessageState] = Map()  # noqa: RUF009 - immutable, safe to share
    accepted: int = 0  # counters over the whole history
    delivered: int = 0
    failed: int = 0
    completed: int = 0  # messages whose every recipient is final
    removed: int = 0  # messages an operator removed from the queue


Fold = Callable[[QueueState, Any], QueueState]
# Event type -> its fold. The only table of what the queue reacts to: QUEUE_TAGS is derived
# from it (eventsourcing's mutator dispatch), so a fold and its tag cannot drift apart.
_FOLDS: dict[type[qe.JournalEvent], Fold] = {}


def _folds(*types: type[qe.JournalEvent]) -> Callable[[Fold], Fold]:
    def register(fold: Fold) -> Fold:
        for cls in types:
            _FOLDS[cls] = fold
        return fold

    return register


def apply(state: QueueState, event: qe.JournalEvent | qe.UnknownEvent) -> QueueState:
    """The state after `event`. Events that do not concern the queue leave it unchanged; an
    operator action with no fold of its own is refused (TypeError), never guessed at."""
    fold = _FOLDS.get(type(event))  # type: ignore[arg-type]
    if fold is not None:
        return fold(state, event)
    if isinstance(event, qe.OperatorAction):
        raise TypeError(f"{event.TAG or type(event).__name__}: an operator action the queue does not know")
    return state


@_folds(qe.MessageAccepted)
def _accepted(state: QueueState, event: qe.MessageAccepted) -> QueueState:
    if event.queue_id in state.messages:
        return state
    params = event.recipient_params
    message = MessageState(
        queue_id=event.queue_id,
        reverse_path=event.reverse_path,
        blob=event.blob,
        size=event.size,
        accepted_at=event.at,
        message_id=event.message_id,
        postq=event.postq,
        traceparent=event.trace_context.get("traceparent", ""),
        trace_continued=event.trace_continued,
        recipients=tuple(
            RecipientState(address=a, notify=((params.get(a) or {}).get("NOTIFY") or "").upper()) for a in dict.fromkeys(event.recipients)
        ),
    )
    return replace(state, messages=state.messages.set(event.queue_id, message), accepted=state.accepted + 1)


def _changed(state: QueueState, queue_id: str, change: Callable[[MessageState], MessageState]) -> QueueState:
    """The state with one queued message changed (nothing when it is not queued any more)."""
    found = state.messages.get(queue_id)
    if found is None:
        return state  # already complete or removed: nothing to act on
    return replace(state, messages=state.messages.set(queue_id, change(found)))


@_folds(qe.DeliveryStarted)
def _started(state: QueueState, event: qe.DeliveryStarted) -> QueueState:
    def mark(found: MessageState) -> MessageState:
        marked = tuple(
            replace(r, in_doubt=True) if r.address in event.recipients and r.status == "pending" else r for r in found.recipients
        )
        return replace(found, recipients=marked)

    return _changed(state, event.queue_id, mark)


@_folds(qe.MessageBounced)
def _bounced(state: QueueState, event: qe.MessageBounced) -> QueueState:
    if event.queue_id not in state.messages:
        return state
    return replace(state, messages=state.messages.delete(event.queue_id), completed=state.completed + 1)


@_folds(qe.MessageQuarantined)
def _quarantined(state: QueueState, event: qe.MessageQuarantined) -> QueueState:
    return _changed(state, event.queue_id, lambda found: replace(found, held=True, quarantine=event.queue))


@_folds(qe.MessageCorrupted)
def _corrupted(state: QueueState, event: qe.MessageCorrupted) -> QueueState:
    return _changed(state, event.queue_id, lambda found: replace(found, held=True, quarantine=CORRUPT))


@_folds(qe.MessageDelayWarned)
def _delay_warned(state: QueueState, event: qe.MessageDelayWarned) -> QueueState:
    return _changed(state, event.queue_id, lambda found: replace(found, delay_warned=True))


@_folds(qe.MessageFiltered)
def _filtered(state: QueueState, event: qe.MessageFiltered) -> QueueState:
    return _changed(state, event.queue_id, lambda found: replace(found, postq=False))


@_folds(qe.MessageModified)
def _modified(state: QueueState, event: qe.MessageModified) -> QueueState:
    """A new body and envelope: recipients kept keep their state, new ones start pending."""
    found = state.messages.get(event.queue_id)
    if found is None:
        return state
    known = {r.address: r for r in found.recipients}
    recipients = tuple(known.get(a) or RecipientState(address=a) for a in dict.fromkeys(event.recipients))
    changed = replace(found, blob=event.blob, size=event.size, reverse_path=event.reverse_path, recipients=recipients)
    if not recipients:  # every recipient dropped: nothing left to deliver
        return replace(state, messages=state.messages.delete(event.queue_id), completed=state.completed + 1)
    return replace(state, messages=state.messages.set(event.queue_id, changed))


# An operator's actions on a queued message (vsmtp queue ...): one fold each.


@_folds(qe.MessageRemoved)
def _removed(state: QueueState, event: qe.MessageRemoved) -> QueueState:
    if event.queue_id not in state.messages:
        return state
    return replace(state, messages=state.messages.delete(event.queue_id), removed=state.removed + 1)


@_folds(qe.RetryRequested)
def _retry(state: QueueState, event: qe.RetryRequested) -> QueueState:
    def due(found: MessageState) -> MessageState:
        return replace(found, recipients=tuple(replace(r, next_attempt=0.0) if r.status == "pending" else r for r in found.recipients))

    return _changed(state, event.queue_id, due)


@_folds(qe.MessageReleased)
def _released(state: QueueState, event: qe.MessageReleased) -> QueueState:
    return _changed(state, event.queue_id, lambda found: replace(found, held=False, quarantine=""))  # out of quarantine too


@_folds(qe.MessageHeld)
def _held(state: QueueState, event: qe.MessageHeld) -> QueueState:
    return _changed(state, event.queue_id, lambda found: replace(found, held=True))


@_folds(qe.DeliverySucceeded)
def _succeeded(state: QueueState, event: qe.DeliverySucceeded) -> QueueState:
    return _recipient(state, event.queue_id, event.recipient, status="delivered", attempt=True, routed=event)


@_folds(qe.DeliveryFailed)
def _failed_one(state: QueueState, event: qe.DeliveryFailed) -> QueueState:
    return _recipient(state, event.queue_id, event.recipient, status="failed", attempt=True, error=event)


@_folds(qe.DeliveryDeferred)
def _deferred(state: QueueState, event: qe.DeliveryDeferred) -> QueueState:
    return _recipient(state, event.queue_id, event.recipient, status="pending", attempt=True, error=event, retry_at=event.retry_at)


def _recipient(
    state: QueueState,
    queue_id: str,
    address: str,
    *,
    status: Status,
    attempt: bool,
    error: qe.DeliveryFailed | qe.DeliveryDeferred | None = None,
    retry_at: float = 0.0,
    routed: qe.DeliverySucceeded | qe.DeliveryFailed | qe.DeliveryDeferred | None = None,
) -> QueueState:
    routed = routed or error
    message = state.messages.get(queue_id)
    current = message.recipient(address) if message is not None else None
    if message is None or current is None or current.status != "pending":
        return state  # already final, complete, or never ours: a duplicate changes nothing
    updated = replace(
        current,
        status=status,
        attempts=current.attempts + (1 if attempt else 0),
        next_attempt=retry_at,
        last_error=error.reason if error is not None else current.last_error,
        last_status=error.status if error is not None else current.last_status,
        last_code=error.code if error is not None else current.last_code,
        last_host=error.host if error is not None else current.last_host,
        route=routed.route if routed is not None and routed.route else current.route,
        routed_by=routed.routed_by if routed is not None and routed.route else current.routed_by,
        in_doubt=current.in_doubt and status == "pending",  # a final outcome settles the doubt
    )
    message = replace(message, recipients=tuple(updated if r is current else r for r in message.recipients))
    counters = {
        "delivered": state.delivered + (status == "delivered"),
        "failed": state.failed + (status == "failed"),
    }
    if message.done and not (message.reverse_path and _to_report(message.recipients)) and not _failed(message.recipients):
        return replace(state, messages=state.messages.delete(queue_id), completed=state.completed + 1, **counters)
    if message.done and not message.reverse_path:
        # A bounce (or other mail from <>) that failed: never bounced in turn (no loops), but
        # kept in the queue, held, for the operator to see and remove.
        message = replace(message, held=True)
    # Done with failures, from a sender: it stays until its bounce is queued (message.bounced).
    return replace(state, messages=state.messages.set(queue_id, message), **counters)


def _failed(recipients: Iterable[RecipientState]) -> bool:
    return any(r.status == "failed" for r in recipients)


def _to_report(recipients: Iterable[RecipientState]) -> bool:
    return any(r.status == "failed" or (r.status == "delivered" and r.wants("SUCCESS")) for r in recipients)


# 2 added `held` per message and the `removed` counter; 3 `notify` per recipient and
# `delay_warned` and `quarantine` per message; 4 `postq` per message. Older versions still read.
SNAPSHOT_VERSION = 5  # 5: last_status, last_code, last_host, route and routed_by per recipient


# A snapshot stores each object as a list of its fields in these orders. A new field goes at
# the end of its list (with a default), so a shorter list from an older version still reads.
_COUNTERS = ("accepted", "delivered", "failed", "completed", "removed")
_MESSAGE = (
    "queue_id",
    "reverse_path",
    "blob",
    "size",
    "accepted_at",
    "message_id",
    "recipients",
    "held",
    "delay_warned",
    "quarantine",
    "postq",
    "traceparent",  # later fields: a snapshot without them gives their defaults
    "trace_continued",
)
_RECIPIENT = (
    "address",
    "status",
    "attempts",
    "next_attempt",
    "last_error",
    "in_doubt",
    "notify",
    "last_status",
    "last_code",
    "last_host",
    "route",
    "routed_by",
)


def to_snapshot(state: QueueState) -> dict[str, Any]:
    """The state as plain data (for CBOR): what a checkpoint stores."""
    return {
        "version": SNAPSHOT_VERSION,
        "position": state.position,
        "counters": [getattr(state, name) for name in _COUNTERS],
        "messages": [
            [[[getattr(r, f) for f in _RECIPIENT] for r in m.recipients] if name == "recipients" else getattr(m, name) for name in _MESSAGE]
            for m in state.messages.values()
        ],
    }


def from_snapshot(data: Mapping[str, Any]) -> QueueState:
    """The inverse of to_snapshot. Raises ValueError for a snapshot this version cannot read."""
    version = data.get("version")
    if version not in range(1, SNAPSHOT_VERSION + 1):
        raise ValueError(f"snapshot version {version!r}, this vsmtp reads 1 to {SNAPSHOT_VERSION}")
    try:
        messages = Map((row[0], _message(row)) for row in data["messages"])
        return QueueState(position=data["position"], messages=messages, **_fields(_COUNTERS, data["counters"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"snapshot does not read: {exc}") from exc


def _message(row: list[Any]) -> MessageState:
    fields = _fields(_MESSAGE, row)
    fields["recipients"] = tuple(RecipientState(**_fields(_RECIPIENT, r)) for r in fields["recipients"])
    return MessageState(**fields)


def _fields(names: tuple[str, ...], row: list[Any]) -> dict[str, Any]:
    """A stored list as keyword arguments; the fields it lacks (an older version) take their defaults."""
    if len(row) > len(names):
        raise ValueError(f"{len(row)} values where this version knows {len(names)}")
    return dict(zip(names, row, strict=False))


# The only tags apply() reacts to: other records (sessions, TLS, ...) only move the position,
# and are not even decoded (most of the journal, and most of the cost of a replay).
QUEUE_TAGS = frozenset(cls.TAG for cls in _FOLDS)


def fold(state: QueueState, records: Iterable[Record]) -> QueueState:
    """Apply records in order, advancing the state's position."""
    position = state.position
    for record in records:
        if record.tag in QUEUE_TAGS:
            state = apply(state, qe.decode(record))
        position = record.position
    return state if state.position == position else replace(state, position=position)
