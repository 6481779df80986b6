"""Journal events: frozen, past tense, each with a stable TAG and a VERSION.

A tag is forever. Changing a payload means VERSION + 1 and an upcaster registered with
`upcaster(tag, from_version)` that turns the old payload into the new one; records are
upcast on read, never rewritten. Payloads hold only CBOR-friendly values (str, int, float,
bool, bytes, None, lists and maps of them); tuples travel as lists.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vsmtp_journal import Append, Record
from vsmtp_journal.codec import Part

Payload = dict[str, Any]
EVENTS: dict[str, type[JournalEvent]] = {}
_UPCASTERS: dict[tuple[str, int], Callable[[Payload], Payload]] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalEvent:
    TAG: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    at: float  # seconds since the epoch, when it happened

    def __init_subclass__(cls) -> None:
        # No super() here: slots=True rebuilds the class, which breaks zero-argument super().
        if cls.TAG:
            if cls.TAG in EVENTS and EVENTS[cls.TAG].__name__ != cls.__name__:
                raise TypeError(f"tag {cls.TAG!r} already belongs to {EVENTS[cls.TAG].__name__}")
            EVENTS[cls.TAG] = cls

    def to_payload(self) -> Payload:
        plan = _plan(type(self))
        payload = {name: getattr(self, name) for name in plan.names}
        for name in plan.nested:  # tuples to lists, mappings to dicts: what CBOR writes
            payload[name] = _plain(payload[name])
        return payload

    @classmethod
    def from_payload(cls, payload: Payload) -> JournalEvent:
        plan = _plan(cls)
        values = {k: v for k, v in payload.items() if k in plan.known}
        for name in plan.tuples:
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)

    def describe(self) -> str:
        """One line for humans: the fields other than the timestamp, as key=value."""
        parts = []
        for f in dataclasses.fields(self):
            if f.name == "at":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = ",".join(map(str, value))
            elif isinstance(value, bytes):
                value = value.decode("ascii") if value.isascii() and value.decode("ascii").isprintable() else value.hex()
            elif isinstance(value, Mapping):
                value = ",".join(f"{k}={v}" if v is not None else str(k) for k, v in value.items()) or "-"
            parts.append(f"{f.name}={value}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownEvent:
    """A record whose tag this version of vsmtp does not know (e.g. written by a plugin)."""

    tag: str
    version: int
    payload: Any

    def describe(self) -> str:
        return f"(unknown v{self.version}) {self.payload!r}"


def upcaster(tag: str, from_version: int) -> Callable[[Callable[[Payload], Payload]], Callable[[Payload], Payload]]:
    """Register f(payload of version `from_version`) -> payload of version `from_version + 1`."""

    def register(func: Callable[[Payload], Payload]) -> Callable[[Payload], Payload]:
        _UPCASTERS[(tag, from_version)] = func
        return func

    return register


def encode(event: JournalEvent) -> tuple[str, int, Payload]:
    return event.TAG, event.VERSION, event.to_payload()


def to_append(event: JournalEvent, *, blobs: Mapping[bytes, Part | Sequence[Part]] | None = None) -> Append:
    """What the journal writer appends for `event`: its record, its index keys (written in the
    same transaction) and the blobs it names. Every write of an event goes through here."""
    return Append(event.TAG, event.VERSION, event.to_payload(), dict(blobs or {}), index_keys(event))


def index_keys(event: JournalEvent) -> tuple[bytes, ...]:
    """The journal index keys that find this event (written in the same transaction):
    a session by its id, a message by its queue id and by its Message-ID header."""
    if isinstance(event, SessionOpened):
        return (b"session:" + event.session_id.encode(),)
    if isinstance(event, MessageAccepted):
        keys = [b"queue:" + event.queue_id.encode()]
        if event.message_id:
            keys.append(b"message-id:" + event.message_id.encode("utf-8", "surrogateescape"))
        return tuple(keys)
    return ()


def decode(record: Record) -> JournalEvent | UnknownEvent:
    cls = EVENTS.get(record.tag)
    if cls is None or record.version > cls.VERSION or not isinstance(record.payload, dict):
        return UnknownEvent(tag=record.tag, version=record.version, payload=record.payload)
    payload, version = record.payload, record.version
    while version < cls.VERSION:
        step = _UPCASTERS.get((record.tag, version))
        if step is None:
            raise LookupError(f"no upcaster for {record.tag} v{version} -> v{version + 1}")
        payload, version = step(payload), version + 1
    return cls.from_payload(payload)


def _plain(value: Any) -> Any:
    if type(value) is str or value is None:  # most values: no ABC check for them
        return value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict) or isinstance(value, Mapping):  # noqa: SIM101 - dict first: Mapping is an ABC, slow to check
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class _Plan:
    """How an event class's fields are written and read, worked out once from its type hints
    (encoding and decoding are on the hot path of every message)."""

    names: tuple[str, ...]
    known: frozenset[str]
    nested: tuple[str, ...]  # fields that may hold tuples or mappings (everything but plain scalars)
    tuples: tuple[str, ...]  # fields read back as tuples (CBOR gives lists)


_PLANS: dict[type, _Plan] = {}
_SCALARS = (str, int, float, bool, bytes, type(None))
_UNIONS = (typing.Union, type(int | None))  # Optional[...], and X | Y (types.UnionType)


def _plan(cls: type) -> _Plan:
    found = _PLANS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        names = tuple(f.name for f in dataclasses.fields(cls))
        nested = tuple(n for n in names if not _scalar(hints[n]))
        tuples = tuple(n for n in names if typing.get_origin(hints[n]) is tuple)
        found = _PLANS[cls] = _Plan(names, frozenset(names), nested, tuples)
    return found


def _scalar(hint: Any) -> bool:
    """A hint whose values CBOR writes as they are: str, int, ... or a union of those."""
    if hint in _SCALARS:
        return True
    return typing.get_origin(hint) in _UNIONS and all(a in _SCALARS for a in typing.get_args(hint))


# -- the SMTP session ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOpened(JournalEvent):
    TAG = "session.opened"
    session_id: str
    listener: str
    peer_host: str
    peer_port: int
    local_host: str
    local_port: int
    tls: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionScreened(JournalEvent):
    """The client was screened before the greeting (a listener with `screen = true`): a DNSBL
    score, or a client that talked before its turn (pregreet)."""

    TAG = "session.screened"
    session_id: str
    test: str  # dnsbl or pregreet
    score: int = 0  # the DNSBL score
    listed: tuple[str, ...] = ()  # the lists that name the client
    refused: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HeloReceived(JournalEvent):
    TAG = "session.helo"
    session_id: str
    verb: str  # HELO or EHLO
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MailReceived(JournalEvent):
    TAG = "session.mail"
    session_id: str
    reverse_path: str
    params: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryStarted(JournalEvent):
    """A remote host said 354 and the message data is about to go: committed durably first,
    so that after a crash the next delivery of these recipients is known to be a possible
    duplicate (the host may have taken it without our hearing its 250)."""

    TAG = "delivery.started"
    queue_id: str
    recipients: tuple[str, ...]
    host: str
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PossibleDuplicate(JournalEvent):
    """A recipient was delivered after an attempt that was cut off once its data had been
    sent: it may have received the message twice (SMTP is at least once)."""

    TAG = "delivery.possible_duplicate"
    queue_id: str
    recipient: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryAttempted(JournalEvent):
    """One connection of a remote delivery: to which host and address, with or without TLS,
    and the server's reply (or why there was none). The recipients' outcomes follow."""

    TAG = "delivery.attempted"
    VERSION = 3  # 2: domain, policy and tls_result, for TLS reports (RFC 8460); 3: tlsa
    queue_id: str
    host: str
    address: str
    tls: bool
    reply: str
    domain: str = ""  # the destination domain (the policy domain of a TLS report), or the relay host
    policy: str = ""  # RFC 8460 policy-type in force: "tlsa" (DANE), "sts" (MTA-STS), "no-policy-found"
    tls_result: str = ""  # RFC 8460: "success", a failure's result-type (certificate-host-mismatch ...), "" : no TLS tried
    tlsa: tuple[str, ...] = ()  # DANE: the host's TLSA records as published ("3 1 1 ab12..."), a TLS report's policy-string


@upcaster("delivery.attempted", 1)
def _attempted_v1(payload: Payload) -> Payload:
    return payload  # domain, policy, tls_result: not known


@upcaster("delivery.attempted", 2)
def _attempted_v2(payload: Payload) -> Payload:
    return payload  # tlsa: not kept


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageExpired(JournalEvent):
    """The message waited `delivery.lifetime` for these recipients: they failed for good."""

    TAG = "message.expired"
    queue_id: str
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageBounced(JournalEvent):
    """The sender was told how the message ended: a delivery status notification (RFC 3464)
    queued as `bounce_id`, in the same transaction, for the recipients that failed and for
    those delivered that asked for it (NOTIFY=SUCCESS). No notice is sent when none of them
    asked for one (NOTIFY=NEVER): then `bounce_id` is empty."""

    TAG = "message.bounced"
    queue_id: str
    bounce_id: str
    recipients: tuple[str, ...]  # the recipients it reports


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageDelayWarned(JournalEvent):
    """The message waited `delivery.delay_warning` for some recipients: the sender was told it
    is delayed (a DSN with Action: delayed, queued as `warning_id` in the same transaction;
    empty when no recipient wanted it, NOTIFY without DELAY). Once per message."""

    TAG = "message.delay_warned"
    queue_id: str
    warning_id: str
    recipients: tuple[str, ...]  # the delayed recipients it reports


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageQuarantined(JournalEvent):
    """A rule or plugin put the message in the quarantine `queue`: kept, not delivered, until
    an operator releases (vsmtp queue release) or removes it. Committed with message.accepted."""

    TAG = "message.quarantined"
    queue_id: str
    queue: str
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageCorrupted(JournalEvent):
    """The message's body failed its checksum when it was read to be delivered: it is kept,
    held in the quarantine `corrupt`, never delivered altered (vsmtp journal verify names it)."""

    TAG = "message.corrupted"
    queue_id: str
    blob: bytes
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageFiltered(JournalEvent):
    """The post-queue stage (postq rules and plugins) ran for the message; what it decided
    is in the same transaction (rule.verdict, rule.action, message.modified, a quarantine
    or failures). Delivery starts after it."""

    TAG = "message.filtered"
    queue_id: str
    verdict: str  # next, accept, deny, reject, quarantine, faccept
    by: str = ""  # who settled it ("" for next)


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageModified(JournalEvent):
    """After queueing, a rule, a plugin or a content filter changed the message: from now on
    it is delivered as `blob` (a new body, written in the same transaction; the first body
    stays in the journal), from `reverse_path` to `recipients`. A recipient not in the list
    any more is dropped; a new one starts pending."""

    TAG = "message.modified"
    queue_id: str
    stage: str  # postq, or the service that changed it
    by: str
    blob: bytes
    size: int
    reverse_path: str
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorAction(JournalEvent):
    """What an operator did to a queued message (vsmtp queue ...); the subclasses name it."""

    queue_id: str
    by: str  # who asked: "vsmtp queue hold (uid 0)", a plugin's name ...


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageHeld(OperatorAction):
    """No delivery until it is released."""

    TAG = "message.held"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReleased(OperatorAction):
    TAG = "message.released"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageRemoved(OperatorAction):
    """Out of the queue, undelivered (its history stays)."""

    TAG = "message.removed"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryRequested(OperatorAction):
    """Its pending recipients are to be tried now."""

    TAG = "message.retry_requested"


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalPurged(JournalEvent):
    """A retention pass removed message bodies and/or the records up to `through`."""

    TAG = "journal.purged"
    blobs: int
    records: int
    through: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MailRefused(JournalEvent):
    """MAIL FROM answered with an error before any transaction began (e.g. storage short)."""

    TAG = "session.mail_refused"
    session_id: str
    reverse_path: str
    reply: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleVerdict(JournalEvent):
    """A rule or plugin settled a stage with a verdict other than next (docs/rules.md), or
    raised (verdict "error", answered 451/421)."""

    TAG = "rule.verdict"
    session_id: str
    stage: str  # connect, helo, auth, mail, rcpt, data, postq, delivery
    by: str  # "rules:FUNCTION" or the plugin's name
    verdict: str  # accept, reject, deny, faccept, quarantine, error
    reply: str = ""  # what the client was told, for a refusal
    recipient: str = ""  # at rcpt
    queue: str = ""  # for quarantine


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleAction(JournalEvent):
    """A rule or plugin changed the message or its envelope (add_header, rewrite_sender ...),
    applied to what was queued as `queue_id`."""

    TAG = "rule.action"
    session_id: str
    queue_id: str
    stage: str
    by: str
    action: str
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientAccepted(JournalEvent):
    TAG = "recipient.accepted"
    session_id: str
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientRejected(JournalEvent):
    TAG = "recipient.rejected"
    session_id: str
    address: str
    reply: str  # what we answered, e.g. "554 5.7.1 Relay access denied"


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsStarted(JournalEvent):
    """The session is now encrypted (after STARTTLS, or at once on an implicit-TLS listener)."""

    TAG = "tls.started"
    session_id: str
    version: str  # e.g. TLSv1.3
    cipher: str
    bits: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticated(JournalEvent):
    """AUTH succeeded (235): the session's client is `username` from here on."""

    TAG = "session.authenticated"
    session_id: str
    mechanism: str  # PLAIN, LOGIN
    username: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthFailed(JournalEvent):
    """AUTH failed: wrong credentials, a malformed exchange, or a rule's refusal. The password
    is never recorded."""

    TAG = "session.auth_failed"
    session_id: str
    mechanism: str
    username: str  # "" when the exchange failed before one was given
    reply: str
    password_ok: bool = False  # the password was right: a rule or plugin refused at the auth stage


# -- sender authentication (vsmtp/auth/results.py gives each `result` its shape) -------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SpfChecked(JournalEvent):
    """SPF was checked for a transaction at MAIL FROM (ctx.spf): result, identity, domain,
    sender, HELO name, client address, explanation."""

    TAG = "auth.spf"
    session_id: str
    result: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class DkimVerified(JournalEvent):
    """Every DKIM signature of a message was checked at the data stage (ctx.dkim): per
    signature d=, s=, a=, result and reason."""

    TAG = "auth.dkim"
    session_id: str
    result: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ArcVerified(JournalEvent):
    """A message's ARC chain was checked at the data stage (ctx.arc)."""

    TAG = "auth.arc"
    session_id: str
    result: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class DmarcEvaluated(JournalEvent):
    """DMARC was evaluated for a message at the data stage (ctx.dmarc), with what an aggregate
    report needs (RFC 7489 appendix C): the source, the envelope, the SPF and DKIM results it
    rests on, and the disposition applied (after the rules had their say)."""

    TAG = "auth.dmarc"
    session_id: str
    source_ip: str
    envelope_from: str  # the domain of MAIL FROM ("" for the null sender)
    envelope_to: str  # the domain of the first recipient
    result: Mapping[str, Any]  # DmarcResult
    spf: Mapping[str, Any] = field(default_factory=dict)  # SpfResult, {} when SPF was not checked
    dkim: tuple[Mapping[str, Any], ...] = ()  # DkimSignature each


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageSigned(JournalEvent):
    """At the post-queue stage the message was signed (DKIM) or sealed (ARC); the signed body
    is the message.modified of the same transaction."""

    TAG = "message.signed"
    queue_id: str
    method: str  # dkim or arc
    signatures: tuple[str, ...]  # "d=example.org s=sel a=rsa-sha256" each


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived(JournalEvent):
    """The end of a message's content (DATA or BDAT LAST) and what we answered."""

    TAG = "session.data"
    session_id: str
    size: int  # octets received
    reply: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionClosed(JournalEvent):
    TAG = "session.closed"
    session_id: str
    reason: str  # quit, peer closed, timeout, error, shutdown


# -- the message and its delivery ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageAccepted(JournalEvent):
    """A message is ours: the 250 to DATA is sent only after this event is durable."""

    TAG = "message.accepted"
    queue_id: str
    session_id: str
    reverse_path: str
    recipients: tuple[str, ...]
    blob: bytes  # key of the message (with our Received header) in the journal's blobs
    size: int
    mail_params: Mapping[str, str | None] = field(default_factory=dict)  # SIZE, BODY, RET, ENVID ...
    recipient_params: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)  # NOTIFY, ORCPT
    message_id: str = ""  # the Message-ID header, if the message has one
    trace_context: Mapping[str, str] = field(default_factory=dict)  # W3C traceparent of the message's span (smtp.message)
    trace_continued: bool = False  # that span continues the client's trace: delivery spans are its children, not linked
    postq: bool = False  # the post-queue stage is to run before its first delivery (message.filtered)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySucceeded(JournalEvent):
    TAG = "delivery.succeeded"
    VERSION = 2  # 2: route and routed_by
    queue_id: str
    recipient: str
    transport: str  # maildir
    detail: str  # where it went, e.g. the Maildir file
    route: str = ""  # the route it took (policy.Route.text): maildir, lmtp:[HOST]:PORT, smtp:DOMAIN, smtp:[HOST]:PORT ...
    routed_by: str = ""  # why that route: mailbox, mailboxes, mx, relayhost, rule


@upcaster("delivery.succeeded", 1)
def _succeeded_v1(payload: Payload) -> Payload:
    return payload  # route and routed_by unknown: their defaults


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryDeferred(JournalEvent):
    TAG = "delivery.deferred"
    VERSION = 2  # 2: the attempt as data (code ... tls), not only its text
    queue_id: str
    recipient: str
    transport: str
    reason: str  # the line operators read: the next hop, then what it said (delivery/transport.py Outcome.reason)
    retry_at: float
    code: int = 0  # the reply code of the server that answered; 0: none did
    status: str = ""  # RFC 3463 enhanced status, the server's or ours
    host: str = ""  # the next hop that answered (mail host, LMTP server, program)
    address: str = ""  # its address
    stage: str = ""  # where the attempt ended (delivery/transport.py STAGES)
    tls: bool = False
    route: str = ""  # as delivery.succeeded's
    routed_by: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryFailed(JournalEvent):
    TAG = "delivery.failed"
    VERSION = 2  # as DeliveryDeferred; and `expired`
    queue_id: str
    recipient: str
    transport: str
    reason: str
    code: int = 0
    status: str = ""
    host: str = ""
    address: str = ""
    stage: str = ""
    tls: bool = False
    route: str = ""
    routed_by: str = ""
    expired: bool = False  # it waited delivery.lifetime: given up (the reason says after what)


# Version 1 of the two events had only the text. Read once, here, to fill the fields in:
# "host[address]: 550 5.1.1 text" from a server, or our own words.
_V1_REMOTE = re.compile(r"^([A-Za-z0-9.-]+)\[([0-9A-Fa-f:.]+)\]: ")
_V1_REPLY = re.compile(r"^([245]\d\d)(?: ([245]\.\d{1,3}\.\d{1,3}))?\b")
_V1_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def _v1_facts(payload: Payload, *, failed: bool) -> Payload:
    reason: str = payload.get("reason", "")
    expired = failed and reason.startswith("message expired")
    remote = _V1_REMOTE.match(reason)
    said = reason[remote.end() :] if remote else reason
    reply = _V1_REPLY.match(said)
    status = reply.group(2) if reply and reply.group(2) else ""
    if not status:
        found = _V1_STATUS.search(reason)
        status = found.group(1) if found else ""
    default = "5.0.0" if failed else "4.0.0"
    if expired:
        status = "4.4.7"
    elif "null MX" in reason:
        status = "5.1.10"
    elif "does not exist" in reason:
        status = "5.1.2"
    elif status[:1] != default[:1]:
        status = default
    facts = {"code": int(reply.group(1)) if reply else 0, "status": status}
    if remote:
        facts |= {"host": remote.group(1), "address": remote.group(2)}
    return {**payload, **facts, **({"expired": True} if expired else {})}


@upcaster("delivery.deferred", 1)
def _deferred_v1(payload: Payload) -> Payload:
    return _v1_facts(payload, failed=False)


@upcaster("delivery.failed", 1)
def _failed_v1(payload: Payload) -> Payload:
    return _v1_facts(payload, failed=True)
