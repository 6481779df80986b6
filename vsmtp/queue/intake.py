"""What queues a message: the body as stored (our Received header first), message.accepted
naming it, and what the stages decided about it, as one group of appends the journal
commits together or not at all. A pure function: the caller gives the time, the ids and
the trace context, and awaits the durable commit before it answers 250."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vsmtp_journal import Append

from ..mail import trace
from ..mail.message import Message
from ..mail.spill import Spill
from . import events as qe


@dataclass(frozen=True, slots=True, kw_only=True)
class Intake:
    accepted: qe.MessageAccepted
    parts: tuple[bytes | Spill, ...]  # the message as stored and delivered: our Received header, then the message
    appends: tuple[Append, ...]  # message.accepted (with the blob) first, then what follows it


def message(
    *,
    queue_id: str,
    session_id: str,
    arrival: trace.Arrival,
    reverse_path: str,
    recipients: Sequence[str],
    recipient_params: Mapping[str, Mapping[str, str | None]],
    mail_params: Mapping[str, str | None],
    message: Message,
    follow: Sequence[qe.JournalEvent] = (),
    quarantine: tuple[str, str] = ("", ""),
    postq: bool = False,
    trace_context: Mapping[str, str],
    trace_continued: bool = False,
    now: float,
) -> Intake:
    """`follow`: the rules' actions as rule.action events; `quarantine`: (queue, by) when a
    stage sent the message there; `postq`: the post-queue stage is to run before delivery."""
    received = trace.received(arrival, queue_id=queue_id, recipients=recipients, now=now)
    parts = (received, *message.parts())
    accepted = qe.MessageAccepted(
        at=now,
        queue_id=queue_id,
        session_id=session_id,
        reverse_path=reverse_path,
        recipients=tuple(recipients),
        recipient_params=recipient_params,
        blob=queue_id.encode(),
        size=sum(map(len, parts)),
        mail_params=mail_params,
        message_id=trace.message_id(message.head),
        trace_context=trace_context,
        trace_continued=trace_continued,
        postq=postq,
    )
    after = list(follow)
    if quarantine[0]:
        after.append(qe.MessageQuarantined(at=now, queue_id=queue_id, queue=quarantine[0], by=quarantine[1]))
    # The header and the message go to the journal as parts: joined once, with the checksum's
    # frame; or, large or spilled, copied in chunks (vsmtp_journal.codec).
    appends = (qe.to_append(accepted, blobs={accepted.blob: parts}), *(qe.to_append(e) for e in after))
    return Intake(accepted=accepted, parts=parts, appends=appends)
