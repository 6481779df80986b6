"""Sessions read back from the journal, as rules saw them: the connection facts, the HELO
name, each transaction (sender, recipients tried, the message if it was queued) and the
verdicts rules and plugins gave. What the post-queue stage rebuilds a message's Context
from, and what `vsmtp rules test` replays through a new rules file."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field

from vsmtp_journal import Journal

from ..config import Config
from ..queue import events as ev
from ..queue import history, policy
from .context import Context, Endpoint, Message

# The records a session is made of (everything else in the journal is skipped undecoded).
_TAGS = frozenset(
    cls.TAG
    for cls in (
        ev.SessionOpened,
        ev.TlsStarted,
        ev.HeloReceived,
        ev.Authenticated,
        ev.AuthFailed,
        ev.MailReceived,
        ev.RecipientAccepted,
        ev.RecipientRejected,
        ev.DataReceived,
        ev.MessageAccepted,
        ev.RuleVerdict,
        ev.SessionClosed,
    )
)


@dataclass(slots=True)
class Transaction:
    sender: str
    params: dict[str, str | None]
    recipients: list[tuple[str, bool]] = field(default_factory=list)  # every RCPT tried: (address, accepted)
    accepted: ev.MessageAccepted | None = None  # when the message was queued
    data_reply: str = ""  # what DATA was answered ("" when it never came)


@dataclass(slots=True)
class Session:
    opened: ev.SessionOpened
    tls_version: str = ""
    helo: str = ""
    auth: str = ""  # who the client logged in as ("" : nobody)
    logins: list[str] = field(default_factory=list)  # every AUTH whose password was right, in order (the auth stage ran)
    transactions: list[Transaction] = field(default_factory=list)
    verdicts: list[tuple[int, ev.RuleVerdict]] = field(default_factory=list)  # (transaction index, -1 before MAIL)
    closed: str = ""  # why it ended ("" if the journal ends before)

    def fold(self, event: ev.JournalEvent) -> None:
        tx = self.transactions[-1] if self.transactions else None
        match event:
            case ev.TlsStarted():
                self.tls_version = event.version
            case ev.HeloReceived():
                self.helo = event.name
            case ev.Authenticated():
                self.auth = event.username
                self.logins.append(event.username)
            case ev.AuthFailed() if event.password_ok:
                self.logins.append(event.username)
            case ev.MailReceived():
                self.transactions.append(Transaction(event.reverse_path, dict(event.params)))
            case ev.RecipientAccepted() | ev.RecipientRejected() if tx is not None:
                tx.recipients.append((event.address, isinstance(event, ev.RecipientAccepted)))
            case ev.MessageAccepted() if tx is not None:
                tx.accepted = event
            case ev.DataReceived() if tx is not None:
                tx.data_reply = event.reply
            case ev.RuleVerdict():
                self.verdicts.append((len(self.transactions) - 1, event))
            case ev.SessionClosed():
                self.closed = event.reason

    def context(self, config: Config) -> Context:
        """A Context with the connection facts, as the session's rules saw them at connect."""
        roles = {listener.name: listener.role for listener in config.listeners}
        opened = self.opened
        ctx = Context(
            session_id=opened.session_id,
            client=Endpoint(ipaddress.ip_address(opened.peer_host), opened.peer_port),
            server=Endpoint(ipaddress.ip_address(opened.local_host), opened.local_port),
            listener=opened.listener,
            role=roles.get(opened.listener, "mx"),
            local_domains=policy.local_domains(config),
        )
        ctx.tls, ctx.tls_version, ctx.helo = bool(self.tls_version) or opened.tls, self.tls_version, self.helo
        ctx.auth = self.auth
        return ctx


def sessions(journal: Journal, *, since: float = 0.0) -> Iterator[Session]:
    """Every session the journal holds that opened at or after `since`, in the order they
    ended (those still open when the journal ends come last)."""
    open_: dict[str, Session] = {}
    for record in journal.read(0):
        if record.tag not in _TAGS:
            continue
        event = ev.decode(record)
        if isinstance(event, ev.SessionOpened):
            if event.at >= since:
                open_[event.session_id] = Session(event)
            continue
        session = open_.get(getattr(event, "session_id", ""))
        if session is None:
            continue
        session.fold(event)  # type: ignore[arg-type]
        if isinstance(event, ev.SessionClosed):
            yield open_.pop(event.session_id)
    yield from open_.values()


def session_of(journal: Journal, accepted: ev.MessageAccepted) -> Session | None:
    """The session that queued `accepted`, up to that message; None once the journal has
    forgotten its start (retention)."""
    start = journal.lookup(b"session:" + accepted.session_id.encode())
    if start is None:
        return None
    session: Session | None = None
    for record in journal.read(start - 1):
        if record.tag not in _TAGS:
            continue
        event = ev.decode(record)
        if getattr(event, "session_id", None) != accepted.session_id:
            continue
        if isinstance(event, ev.SessionOpened):
            session = Session(event)
        elif session is not None:
            session.fold(event)  # type: ignore[arg-type]
        if isinstance(event, ev.MessageAccepted) and event.queue_id == accepted.queue_id:
            break  # what came after in the session is not this message's business
    return session


def message_context(journal: Journal, config: Config, *, queue_id: str, blob: bytes, reverse_path: str, recipients: list[str]) -> Context:
    """The Context of a queued message (postq, delivery): its session's facts read back from
    the journal, its envelope as queued now, and its body (ctx.message). LookupError when the journal no
    longer holds them."""
    body = journal.blob(blob)
    if body is None:
        raise LookupError(f"{queue_id}: message body missing from the journal")
    accepted = history.accepted(journal, queue_id)
    if accepted is None:
        raise LookupError(f"{queue_id}: message.accepted is no longer in the journal")
    session = session_of(journal, accepted)
    if session is None:
        raise LookupError(f"{queue_id}: its session is no longer in the journal")
    ctx = session.context(config)
    ctx.sender, ctx.recipients, ctx.mail_params = reverse_path, list(recipients), dict(accepted.mail_params)
    ctx.queue_id = queue_id
    ctx.message = Message(body)
    return ctx
