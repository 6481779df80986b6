"""The transport interface. Every way vsmtp hands a message on (transports/: maildir, mbox,
smtp, lmtp, pipe, discard, error) answers one question the same way: deliver this message
to these recipients, and say how it went for each one, as data (an Outcome). The worker
(scheduler.py) never knows which transport ran; outcomes.py turns outcomes into journal
events, and bounces are built from those events' fields, never by reading their text.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import trio
from opentelemetry.trace import INVALID_SPAN, Span
from vsmtp_journal import CorruptBlob, GroupCommitWriter, Journal

from .. import telemetry
from ..config import Config
from ..queue import events as qe
from ..queue import policy
from ..smtp import replies

if TYPE_CHECKING:
    import dns.asyncresolver

    from ..net import outbound

Status = Literal["delivered", "deferred", "failed"]

# Where an attempt ended, as Outcome.stage says: the SMTP and LMTP stages (RFC 5321 and
# RFC 2033 replies belong to one of them), and the local ones.
STAGES = ("route", "dns", "connect", "greeting", "hello", "tls", "auth", "mail", "rcpt", "data", "message", "mailbox", "program")

SMALL = 1 << 20  # a body up to this size is read from the journal once for all its recipients


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryJob:
    """What the scheduler hands the workers: one message and its recipients due now."""

    queue_id: str
    reverse_path: str
    blob: bytes
    accepted_at: float
    recipients: tuple[tuple[str, int], ...]  # (address, attempts so far)
    recovered: bool  # pending when the process started: a crash may have cut an attempt short
    in_doubt: frozenset[str] = frozenset()  # recipients whose data went out without a final answer
    routes: Mapping[str, policy.Route] = dataclasses.field(default_factory=dict)  # chosen by delivery rules (set_route)
    traceparent: str = ""  # the message's span, which the delivery spans link to (or continue)
    size: int = 0  # octets of the body (0: unknown)
    trace_continued: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One message to a batch of its recipients that share one route."""

    job: DeliveryJob
    recipients: tuple[tuple[str, int], ...]  # (address, attempts so far)
    route: policy.Route
    routed_by: str = ""  # why this route (policy.routed's reason, or "rule")


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How the attempt went for one recipient."""

    recipient: str
    status: Status
    text: str  # what the next hop said, without its code (or, with no code, our own reason)
    code: int = 0  # the reply code of the server that answered (SMTP, LMTP); 0: none did
    enhanced: str = ""  # RFC 3463 status, the server's or ours; "" : not known
    host: str = ""  # the next hop that answered: a mail host's name, an LMTP socket, a program
    address: str = ""  # its address (IP, or the socket path); "" for local transports
    stage: str = ""  # where it ended (STAGES)
    tls: bool = False  # the connection was encrypted
    detail: str = ""  # for a delivery: where it went (a Maildir file, an mbox offset)

    @property
    def reply(self) -> str:
        """What was said, as a server says it: "550 5.1.1 no such user"."""
        return replies.said(self.code, self.enhanced, self.text)

    @property
    def where(self) -> str:
        """The next hop as logs write it: host[address], or host alone."""
        return f"{self.host}[{self.address}]" if self.address else self.host

    @property
    def reason(self) -> str:
        """The one line operators read (queue list, logs): the hop, then what it said."""
        return f"{self.where}: {self.reply}" if self.where else self.reply


@dataclass(slots=True)
class Result:
    """What one Delivery came to."""

    outcomes: list[Outcome]  # one per recipient
    facts: list[qe.JournalEvent] = field(default_factory=list)  # journaled with them (the connections tried)
    corrupt: str = ""  # the body failed its checksum: nothing was delivered, the message is held

    @classmethod
    def all(cls, delivery: Delivery, status: Status, text: str, **fields: object) -> Result:
        """The same outcome for every recipient."""
        return cls([Outcome(recipient=a, status=status, text=text, **fields) for a, _ in delivery.recipients])  # type: ignore[arg-type]


@dataclass(slots=True, kw_only=True)
class Services:
    """What transports may use, shared by all of them (built by the worker, renewed on reload)."""

    config: Config
    journal: Journal
    writer: GroupCommitWriter
    resolver: dns.asyncresolver.Resolver
    connections: outbound.ConnectionCache
    host_limits: outbound.HostLimits
    # Journals delivery.started, durably, before the data goes to a host that may take it
    # without our hearing the answer: (queue id, recipients, host, address).
    started: Callable[[str, list[str], str, str], Awaitable[None]]


class Transport(Protocol):
    """One way of delivering. `deliver` is given deliveries of its own kind and returns one
    Result per Delivery, in order; it raises only for a bug (a failure is an Outcome).

    A transport that writes local files (concurrent False) gets a whole batch in one call, so
    it can share one worker thread and one directory sync among them; the worker waits for
    it. A network transport (concurrent True) gets one Delivery per call, each in a task of
    its own, and keeps its own limits."""

    @property
    def kind(self) -> str: ...  # the route kind it serves (policy.Route.kind)

    @property
    def concurrent(self) -> bool: ...

    @property
    def max_recipients(self) -> int: ...  # recipients in one Delivery (0: no limit)

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Result]: ...


def body_reader(journal: Journal, job: DeliveryJob) -> Callable[[], Iterable[bytes | memoryview]] | None:
    """How a transport reads the message, checked (CorruptBlob) before anything is written:
    a small body read once for all its recipients, a large one checked in place and then
    read a chunk at a time for each. None: the body is no longer in the journal. Reads the
    journal: call it in a worker thread."""
    if 0 < job.size <= SMALL:
        whole = journal.blob(job.blob)
        return None if whole is None else (lambda: (whole,))
    return (lambda: journal.blob_chunks(job.blob)) if journal.check_blob(job.blob) else None


MISSING = "message body missing from the journal"


async def whole_body(journal: Journal, delivery: Delivery) -> bytes | Result:
    """The message whole, read in a worker thread, for a transport that sends it in one piece
    (lmtp, pipe); or the Result when it cannot go: damaged (held) or gone (failed)."""
    try:
        body = await trio.to_thread.run_sync(journal.blob, delivery.job.blob)
    except CorruptBlob as exc:
        return Result([], corrupt=exc.reason)
    if body is None:
        return Result.all(delivery, "failed", MISSING, enhanced="5.3.0", stage="route")
    return body


def traced(
    name: str, queue_id: str, traceparent: str, continued: bool, *, start_time: int | None = None, current: bool = True, **attributes: Any
) -> contextlib.AbstractContextManager[Span]:
    """A span of the delivery process for one message, tied to the message's own span
    (telemetry.spans.delivery says what `start_time` and `current` do)."""
    if not telemetry.enabled():
        return contextlib.nullcontext(INVALID_SPAN)
    context = {"traceparent": traceparent} if traceparent else {}
    attributes = {"vsmtp.queue_id": queue_id, **attributes}
    return telemetry.spans.delivery(name, context, continued=continued, start_time=start_time, current=current, **attributes)
