"""Sessions read back from the journal, as rules saw them: the connection facts, the HELO
name, each transaction (sender, recipients tried, the message if it was queued) and the
verdicts rules and plugins gave. What the post-queue stage rebuilds a message's Context
from, and what `vsmtp rules test` replays through a new rules file."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vsmtp_journal import Journal

from ..auth import results
from ..auth.results import ArcResult, DkimResult, DmarcResult, SpfResult
from ..config import Config
from ..mail.message import Message
from ..queue import events as qe
from ..queue import policy
from .context import Context, Endpoint


@dataclass(slots=True)
class RecordedTransaction:
    sender: str
    params: dict[str, str | None]
    recipients: list[tuple[str, bool]] = field(default_factory=list)  # every RCPT tried: (address, accepted)
    accepted: qe.MessageAccepted | None = None  # when the message was queued
    data_reply: str = ""  # what DATA was answered ("" when it never came)
    spf: SpfResult | None = None  # sender authentication, as the checks found it
    dkim: DkimResult | None = None
    arc: ArcResult | None = None
    dmarc: DmarcResult | None = None

    def authentication(self, ctx: Context, config: Config, *, stage: str) -> None:
        """Put into `ctx` the results the checks had found by `stage` (mail: SPF; data: all).
        An unsigned message leaves no auth.dkim record (nor one without a chain auth.arc):
        with verification on, that is an empty result, as the data stage saw it."""
        ctx.spf = self.spf
        if stage != "mail":
            ctx.dmarc = self.dmarc
            ctx.dkim = self.dkim if self.dkim is not None or not config.dkim.verify else DkimResult()
            ctx.arc = self.arc if self.arc is not None or not config.arc.verify else ArcResult(result="none")


@dataclass(slots=True)
class RecordedSession:
    opened: qe.SessionOpened
    tls_version: str = ""
    helo: str = ""
    auth: str = ""  # who the client logged in as ("" : nobody)
    logins: list[str] = field(default_factory=list)  # every AUTH whose password was right, in order (the auth stage ran)
    transactions: list[RecordedTransaction] = field(default_factory=list)
    verdicts: list[tuple[int, qe.RuleVerdict]] = field(default_factory=list)  # (transaction index, -1 before MAIL)
    closed: str = ""  # why it ended ("" if the journal ends before)

    def fold(self, event: qe.JournalEvent) -> None:
        step = _FOLDS.get(type(event))
        if step is not None:
            step(self, event)

    @property
    def transaction(self) -> RecordedTransaction | None:
        return self.transactions[-1] if self.transactions else None

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


def _tls(session: RecordedSession, event: qe.TlsStarted) -> None:
    session.tls_version = event.version


def _helo(session: RecordedSession, event: qe.HeloReceived) -> None:
    session.helo = event.name


def _authenticated(session: RecordedSession, event: qe.Authenticated) -> None:
    session.auth = event.username
    session.logins.append(event.username)


def _auth_failed(session: RecordedSession, event: qe.AuthFailed) -> None:
    if event.password_ok:  # the password was right: the auth stage ran (and refused)
        session.logins.append(event.username)


def _mail(session: RecordedSession, event: qe.MailReceived) -> None:
    session.transactions.append(RecordedTransaction(event.reverse_path, dict(event.params)))


def _recipient(session: RecordedSession, event: qe.RecipientAccepted | qe.RecipientRejected) -> None:
    if (tx := session.transaction) is not None:
        tx.recipients.append((event.address, isinstance(event, qe.RecipientAccepted)))


def _accepted(session: RecordedSession, event: qe.MessageAccepted) -> None:
    if (tx := session.transaction) is not None:
        tx.accepted = event


def _data(session: RecordedSession, event: qe.DataReceived) -> None:
    if (tx := session.transaction) is not None:
        tx.data_reply = event.reply


def _spf(session: RecordedSession, event: qe.SpfChecked) -> None:
    if (tx := session.transaction) is not None:
        tx.spf = results.spf_of(event.result)


def _dkim(session: RecordedSession, event: qe.DkimVerified) -> None:
    if (tx := session.transaction) is not None:
        tx.dkim = results.dkim_of(event.result)


def _arc(session: RecordedSession, event: qe.ArcVerified) -> None:
    if (tx := session.transaction) is not None:
        tx.arc = results.arc_of(event.result)


def _dmarc(session: RecordedSession, event: qe.DmarcEvaluated) -> None:
    if (tx := session.transaction) is not None:
        tx.dmarc = results.dmarc_of(event.result)


def _verdict(session: RecordedSession, event: qe.RuleVerdict) -> None:
    session.verdicts.append((len(session.transactions) - 1, event))


def _closed(session: RecordedSession, event: qe.SessionClosed) -> None:
    session.closed = event.reason


# Event type -> how it changes a recorded session. The records a session is made of are
# these and session.opened (everything else in the journal is skipped undecoded).
_FOLDS: dict[type[qe.JournalEvent], Callable[[RecordedSession, Any], None]] = {
    qe.TlsStarted: _tls,
    qe.HeloReceived: _helo,
    qe.Authenticated: _authenticated,
    qe.AuthFailed: _auth_failed,
    qe.MailReceived: _mail,
    qe.RecipientAccepted: _recipient,
    qe.RecipientRejected: _recipient,
    qe.MessageAccepted: _accepted,
    qe.DataReceived: _data,
    qe.SpfChecked: _spf,
    qe.DkimVerified: _dkim,
    qe.ArcVerified: _arc,
    qe.DmarcEvaluated: _dmarc,
    qe.RuleVerdict: _verdict,
    qe.SessionClosed: _closed,
}
_TAGS = frozenset({qe.SessionOpened.TAG, *(cls.TAG for cls in _FOLDS)})


def sessions(journal: Journal, *, since: float = 0.0) -> Iterator[RecordedSession]:
    """Every session the journal holds that opened at or after `since`, in the order they
    ended (those still open when the journal ends come last)."""
    open_: dict[str, RecordedSession] = {}
    for record in journal.read(0):
        if record.tag not in _TAGS:
            continue
        event = qe.decode(record)
        if isinstance(event, qe.SessionOpened):
            if event.at >= since:
                open_[event.session_id] = RecordedSession(event)
            continue
        session = open_.get(getattr(event, "session_id", ""))
        if session is None:
            continue
        session.fold(event)  # type: ignore[arg-type]
        if isinstance(event, qe.SessionClosed):
            yield open_.pop(event.session_id)
    yield from open_.values()


def session_of(journal: Journal, accepted: qe.MessageAccepted) -> RecordedSession | None:
    """The session that queued `accepted`, up to that message; None once the journal has
    forgotten its start (retention)."""
    start = journal.lookup(b"session:" + accepted.session_id.encode())
    if start is None:
        return None
    session: RecordedSession | None = None
    for record in journal.read(start - 1):
        if record.tag not in _TAGS:
            continue
        event = qe.decode(record)
        if getattr(event, "session_id", None) != accepted.session_id:
            continue
        if isinstance(event, qe.SessionOpened):
            session = RecordedSession(event)
        elif session is not None:
            session.fold(event)  # type: ignore[arg-type]
        if isinstance(event, qe.MessageAccepted) and event.queue_id == accepted.queue_id:
            break  # what came after in the session is not this message's business
    return session


def message_context(
    journal: Journal, config: Config, *, accepted: qe.MessageAccepted, blob: bytes, reverse_path: str, recipients: list[str]
) -> Context:
    """The Context of a queued message (postq, delivery): the facts of the session that queued
    `accepted` read back from the journal, its envelope as queued now, and its body `blob`
    (ctx.message). LookupError when the journal no longer holds them."""
    queue_id = accepted.queue_id
    body = journal.blob(blob)
    if body is None:
        raise LookupError(f"{queue_id}: message body missing from the journal")
    session = session_of(journal, accepted)
    if session is None:
        raise LookupError(f"{queue_id}: its session is no longer in the journal")
    ctx = session.context(config)
    if (tx := session.transaction) is not None:
        tx.authentication(ctx, config, stage="postq")  # the last transaction read is this message's
    ctx.sender, ctx.recipients, ctx.mail_params = reverse_path, list(recipients), dict(accepted.mail_params)
    ctx.queue_id = queue_id
    ctx.message = Message(body)
    return ctx
