"""One SMTP session, the conductor: drives the sans-IO ServerConnection over a trio stream,
asks the stages for their verdicts (stages.py), and journals what happened.

It reads bytes, answers each event, and flushes replies only when the peer's input is
drained (RFC 2920: a pipelined batch is answered in one write). The 250 to DATA is sent only
after message.accepted is durable in the journal. What is decided elsewhere stays there:
AUTH (auth.py), the checks and rules (stages.py), the records that queue a message
(queue/intake.py), the Received header (mail/trace.py).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind
from vsmtp_journal import GroupCommitWriter, JournalError, JournalFull

from .. import ids, telemetry
from ..config import ListenerConfig
from ..mail.body import Body, Flight
from ..mail.message import Message
from ..mail.trace import Arrival
from ..queue import events as qe
from ..queue import intake, policy
from ..rules.context import Context, apply_actions, endpoint, exports
from ..rules.verdicts import Holds
from ..smtp import events as ev
from ..smtp import replies
from ..smtp.replies import Reply
from ..smtp.states import State
from . import checks, direct, screen
from .auth import Login
from .deadlines import Deadlines
from .errorlimits import ErrorLimits
from .room import InFlight, Room
from .settings import Peer, SessionSettings
from .stages import StageRunner
from .tls import handshake

log = logging.getLogger(__name__)

READ_SIZE = 65536
_IN_TRANSACTION = (State.MAIL, State.RCPT, State.DATA, State.BDAT)
_JUNK = (ev.Noop, ev.Rset, ev.Vrfy, ev.Expn, ev.Help)  # commands that move no mail forward (ErrorLimits)


@dataclass(slots=True)
class Transaction:
    """What the client has said since MAIL FROM."""

    reverse_path: str
    params: dict[str, str | None]
    holds: Holds  # what the stages decided that holds for the rest of it (deny, quarantine)
    body: Body
    recipients: list[str] = field(default_factory=list)
    recipient_params: dict[str, dict[str, str | None]] = field(default_factory=dict)


async def journaled(writer: GroupCommitWriter, event: qe.JournalEvent) -> None:
    """Append without waiting for the disk: it rides along with the next commit."""
    telemetry.metrics.journaled(event)
    await writer.append_group([qe.to_append(event)], durable=False)


class Session:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        settings: SessionSettings,
        listener: ListenerConfig,
        writer: GroupCommitWriter,
        peer: Peer,
        local: Peer,
        on_last_reply: Callable[[], None] = lambda: None,
        stressed: Callable[[], bool] = lambda: False,
        in_flight: Callable[[], InFlight] = lambda: InFlight(0, 0),
        flight: Flight | None = None,
    ) -> None:
        self.wire = direct.Wire(stream)  # the stream, read and written directly while it is plain TCP
        # Called before the session's last reply (221, 421) goes out: a client that reconnects
        # the moment it reads it must not find its old session still counted against its limit.
        self.on_last_reply = on_last_reply
        self.settings = settings
        self.config = settings.config
        self.listener = listener
        self.writer = writer
        self.peer = peer
        self.local = local
        self.id = ids.new_id()
        self.conn = settings.connection(listener)
        self.helo = ""
        self.tls_info: tuple[str, str, int] | None = None
        self.flight = flight if flight is not None else Flight()  # the process's bodies in flight (net/room.py)
        self._tx: Transaction | None = None
        self.ctx = Context(
            session_id=self.id,
            client=endpoint(peer.host, peer.port),
            server=endpoint(local.host, local.port),
            listener=listener.name,
            role=listener.role,
            local_domains=policy.local_domains(self.config),
        )
        self.holds = Holds()  # what a verdict before MAIL holds for the whole session
        # What the session's parts journal with: bound to the writer, not to the session, so
        # that no part refers back to it. A session in a reference cycle outlives its
        # connection until a full garbage collection (rare: workers.settle_heap), and keeps
        # its last message and buffers with it: 27 MiB more in each receiving process at 100
        # KiB with a connection per message.
        self._journal = functools.partial(journaled, writer)
        self.stages = StageRunner(settings.stages, settings.checks, self.ctx, self._journal)
        self.login = Login(settings, ctx=self.ctx, stages=self.stages, holds=self.holds, journal=self._journal)
        self.errors = ErrorLimits(self.config.limits)
        self._out = bytearray()
        self.deadlines = Deadlines(self.config.limits, now=trio.current_time(), stressed=stressed)
        self.room = Room(self.config, writer, in_flight)
        self._shutdown_deadline: float | None = None
        self.span: Span = INVALID_SPAN  # the session's, while it converses
        self._recv_scope: trio.CancelScope | None = None

    @property
    def tx(self) -> Transaction | None:
        return self._tx

    @tx.setter
    def tx(self, value: Transaction | None) -> None:
        """A transaction ends however it ends (its message, RSET, EHLO, a refusal, the close):
        its body stops counting in the bodies in flight."""
        if self._tx is not None and self._tx is not value:
            self._tx.body.release()
        self._tx = value

    # -- the loop --------------------------------------------------------------------------

    async def converse(self) -> None:
        """Hold the whole conversation, from the greeting (or the TLS handshake) to the close."""
        where = {"client": (self.peer.host, self.peer.port), "server": (self.local.host, self.local.port)}
        attributes = telemetry.spans.session_attributes(**where, listener=self.listener.name, session_id=self.id)
        with telemetry.span(telemetry.SPAN_SESSION, kind=SpanKind.SERVER, attributes=attributes) as span:
            self.span = span
            telemetry.metrics.session(self.listener.name, +1)
            reason = "error"
            try:
                implicit = self.listener.role == "submissions"
                if implicit and not await self._start_tls():
                    reason = "tls handshake failed"
                    return
                opened = qe.SessionOpened(
                    at=time.time(),
                    session_id=self.id,
                    listener=self.listener.name,
                    peer_host=self.peer.host,
                    peer_port=self.peer.port,
                    local_host=self.local.host,
                    local_port=self.local.port,
                    tls=implicit,
                )
                await self._journal(opened)
                if implicit:
                    await self._tls_started()
                reason = await self._exchange()
            except trio.BrokenResourceError:
                reason = "connection lost"
            except trio.Cancelled:
                reason = "shutdown"
                raise
            finally:
                if self.tx is not None:
                    self.tx.body.close()
                    self.tx = None  # and out of the bodies in flight
                span.set_attribute("vsmtp.close_reason", reason)
                telemetry.metrics.session(self.listener.name, -1)
                with trio.CancelScope(shield=True):
                    try:
                        await self._journal(qe.SessionClosed(at=time.time(), session_id=self.id, reason=reason))
                    except JournalError:
                        log.debug("session %s: session.closed not journaled (the writer has stopped)", self.id)
                    await self.wire.close()

    def request_shutdown(self, deadline: float) -> None:
        """SIGTERM: finish an open transaction by `deadline`; an idle session closes at once."""
        now = trio.current_time()
        self._shutdown_deadline = deadline if self._in_transaction() else now
        if self._recv_scope is not None:
            self._recv_scope.deadline = min(self._recv_scope.deadline, self._shutdown_deadline)

    def _in_transaction(self) -> bool:
        return self.conn.state in _IN_TRANSACTION

    async def _exchange(self) -> str:
        """Greet, then answer every event until the connection closes; why it did."""
        verdict = await self.stages.run("connect", self.holds)
        if verdict.refuses:
            self._out += self.conn.send(replies.HOOK_FAILED_AT_CONNECT if verdict.answer is replies.HOOK_FAILED else verdict.answer)
            self.on_last_reply()
            await self._flush()
            return "denied at connect"
        if self._pregreet() and await screen.talked_too_early(self.wire.stream, self.config.hostname, self.config.screen.pregreet):
            await self._journal(qe.SessionScreened(at=time.time(), session_id=self.id, test="pregreet", refused=True))
            return await self._close_with(screen.TALKED_TOO_EARLY, "talked too early")
        self._out += self.conn.send(replies.greeting(self.config.hostname))
        while True:
            event = self.conn.next_event()
            if event is ev.NEED_DATA:
                closing = await self._receive()
                if closing is not None:
                    return closing
                continue
            if isinstance(event, ev.ConnectionClosed):
                return "peer closed"
            if isinstance(event, ev.DataChunk):
                self.deadlines.received(len(event.data))
                if self.tx is not None:  # else a chunk of a transaction already refused
                    await self.tx.body.add(event.data)
                    if not self.room.while_receiving():
                        self.tx.body.drop()  # read to its end, then refused: 452
                continue
            assert event is not ev.PAUSED, "every event is answered before the next is read"
            reply = await self.errors.count(await self._answer(event), self._flush, junk=isinstance(event, _JUNK))
            self._out += self.conn.send(reply)
            telemetry.spans.command(self.span, event, reply)
            self.deadlines.answered()
            if isinstance(event, ev.StartTls) and reply.positive:
                await self._flush()
                if not await self._start_tls():
                    return "tls handshake failed"
                await self._tls_started()
                self.helo, self.tx, self.ctx.helo = "", None, ""
                self.ctx.auth = ""  # as the connection forgets it (RFC 3207 4.2); AUTH needs TLS, so there was none
                self.ctx.new_transaction()
            if self.conn.state is State.CLOSED:
                self.on_last_reply()
                await self._flush()
                if isinstance(event, ev.Quit):
                    return "quit"
                return "too many errors" if reply == replies.TOO_MANY_ERRORS else f"closed after {reply.code}"

    def _pregreet(self) -> bool:
        return self.listener.screen and self.config.screen.pregreet > 0 and not self.settings.trusted(self.ctx.client.address)

    async def _receive(self) -> str | None:
        """Flush, then read more input. Returns why the session must close, or None."""
        if self._shutdown_deadline is not None and not self._in_transaction():
            return await self._close_with(replies.SHUTTING_DOWN, "shutdown")
        await self._flush()
        in_data = self.conn.state is State.DATA or self.conn.state is State.BDAT
        now = trio.current_time()
        deadline = self.deadlines.until(in_data=in_data, now=now)
        if self._shutdown_deadline is not None:
            deadline = min(deadline, self._shutdown_deadline)
        data: bytes | bytearray | None = None
        if self.wire.direct and now < deadline:
            await trio.lowlevel.checkpoint()  # another session runs between two reads of this one
            data = self.wire.receive_now(READ_SIZE)
        if data is None:  # nothing yet: wait for it, with the deadline
            data = await self._wait_receive(deadline)
        if data is None:
            now = trio.current_time()
            if self._shutdown_deadline is not None and now >= self._shutdown_deadline:
                return await self._close_with(replies.SHUTTING_DOWN, "shutdown")
            if now >= self.deadlines.session_end:
                return await self._close_with(replies.SESSION_TOO_LONG, "session too long")
            return await self._close_with(replies.TIMEOUT, "timeout")
        self.conn.receive_data(data)
        return None

    async def _wait_receive(self, deadline: float) -> bytes | bytearray | None:
        """Read from the stream, waiting until `deadline` (or the shutdown's): None if it passed."""
        with trio.CancelScope(deadline=deadline) as scope:
            self._recv_scope = scope
            data = await self.wire.receive(READ_SIZE)
        self._recv_scope = None
        return None if scope.cancelled_caught else data

    async def _close_with(self, reply: Reply, reason: str) -> str:
        self._out += reply.to_bytes()
        with trio.move_on_after(5):
            await self._flush()
        return reason

    async def _flush(self) -> None:
        if self._out:
            await self.wire.send(self._out)

    # -- TLS ------------------------------------------------------------------------------

    async def _start_tls(self) -> bool:
        """Handshake as the TLS server on our stream; False if it failed (the session ends)."""
        self.wire.secure()
        try:
            self.wire.stream, self.tls_info = await handshake(
                self.wire.stream, self.settings.tls[self.listener.name], timeout=self.config.tls.handshake_timeout
            )
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            log.info("session %s: TLS handshake with %s failed: %s", self.id, self.peer.host, exc.__cause__ or exc)
            telemetry.metrics.tls_handshake("inbound", False)
            return False
        return True

    async def _tls_started(self) -> None:
        assert self.tls_info is not None
        self.conn.tls = self.ctx.tls = True
        version, cipher, bits = self.tls_info
        self.ctx.tls_version = version
        telemetry.spans.tls_started(self.span, version, cipher)
        await self._journal(qe.TlsStarted(at=time.time(), session_id=self.id, version=version, cipher=cipher, bits=bits))

    # -- answers ---------------------------------------------------------------------------

    async def _answer(self, event: ev.Event) -> Reply:
        now = time.time()
        match event:
            case ev.Ehlo(domain=name) | ev.Helo(domain=name):
                return await self._helo(name, esmtp=isinstance(event, ev.Ehlo), now=now)
            case ev.MailFrom(reverse_path=path, params=params):
                return await self._mail(path, dict(params), now=now)
            case ev.RcptTo(forward_path=address, params=params):
                return await self._rcpt(address, dict(params), now=now)
            case ev.Data():
                return replies.START_DATA if self.room.for_data() else replies.STORAGE_FULL
            case ev.Bdat():
                assert self.tx is not None
                if self.tx.body.too_big or self.tx.body.no_room or (self.tx.body.size == 0 and not self.room.for_data()):
                    refused, self.tx = self.tx.body, None  # RFC 3030: a refused chunk ends the transaction
                    return replies.MESSAGE_TOO_BIG if refused.too_big else replies.STORAGE_FULL
                return replies.CHUNK_OK
            case ev.DataEnd(bare_line_endings=bare, long_line=long) | ev.BdatLast(bare_line_endings=bare, long_line=long):
                return await self._message_end(bare, long)
            case ev.StartTls():
                return replies.READY_FOR_TLS
            case ev.Auth(mechanism=mechanism, initial=initial):
                return await self.login.begin(mechanism, initial)
            case ev.AuthResponse(cancelled=True):
                return self.login.cancel()
            case ev.AuthResponse(data=data):
                return await self.login.respond(data)
            case ev.Rset():
                self.tx = None
                self.ctx.new_transaction()
                return replies.OK
            case ev.Noop():
                return replies.OK
            case ev.Quit():
                return replies.bye()
            case ev.Vrfy():
                return replies.CANNOT_VRFY  # RFC 5321 3.5.3: 252, no user enumeration
            case ev.Expn():
                return replies.EXPN_DISABLED
            case ev.Help():
                return replies.HELP
            case ev.Invalid(reply=reply):
                self.login.abandon()  # a refused line in an AUTH exchange ends it
                return reply
        raise AssertionError(f"unhandled event {event!r}")

    async def _helo(self, name: str, *, esmtp: bool, now: float) -> Reply:
        self.helo, self.tx = name, None
        await self._journal(qe.HeloReceived(at=now, session_id=self.id, verb="EHLO" if esmtp else "HELO", name=name))
        self.ctx.helo = name
        self.ctx.new_transaction()
        verdict = await self.stages.run("helo", self.holds)  # a deny: every later MAIL gets the same answer
        if verdict.refuses:
            return verdict.answer
        if not esmtp:
            return replies.helo(self.config.hostname)
        return replies.ehlo(self.config.hostname, name, self.conn.extensions.keywords(tls_active=self.conn.tls))

    async def _mail(self, path: str, params: dict[str, str | None], *, now: float) -> Reply:
        if self.listener.role == "submission" and not self.conn.tls:
            return replies.TLS_REQUIRED  # RFC 8314 / Postfix smtpd_tls_security_level=encrypt
        if self.listener.require_auth and not self.ctx.auth:
            return replies.AUTH_REQUIRED
        if not self.room.for_mail(params):
            await self._journal(qe.MailRefused(at=now, session_id=self.id, reverse_path=path, reply=str(replies.STORAGE_FULL)))
            return replies.STORAGE_FULL
        if self.holds.denied is not None:
            return self.holds.denied.answer
        limits = self.config.limits
        body = Body(limits.message_size, keep=limits.memory_per_message, spool=self.config.journal.path, flight=self.flight)
        tx = Transaction(reverse_path=path, params=params, holds=self.holds.for_transaction(), body=body)
        await self._journal(qe.MailReceived(at=now, session_id=self.id, reverse_path=path, params=params))
        self.ctx.new_transaction()
        self.ctx.sender, self.ctx.mail_params, self.ctx.recipients = path, tx.params, tx.recipients
        verdict = await self.stages.run("mail", tx.holds)
        if verdict.refuses:
            return verdict.answer
        self.tx = tx
        return replies.SENDER_OK

    async def _rcpt(self, address: str, params: dict[str, str | None], *, now: float) -> Reply:
        tx = self.tx
        assert tx is not None
        if address in tx.recipients:
            reply = replies.RECIPIENT_OK  # a duplicate RCPT is accepted once
        elif len(tx.recipients) >= self.config.limits.recipients:
            reply = replies.TOO_MANY_RECIPIENTS  # RFC 5321 4.5.3.1.10: 452, the client sends the rest later
        elif tx.holds.denied is not None:
            reply = tx.holds.denied.answer
        else:
            self.ctx.recipient = address
            verdict = await self.stages.run("rcpt", tx.holds, recipient=address)
            self.ctx.recipient = ""
            reply = verdict.answer if verdict.refuses else replies.RECIPIENT_OK
        if reply is not replies.RECIPIENT_OK:
            await self._journal(qe.RecipientRejected(at=now, session_id=self.id, address=address, reply=str(reply)))
            return reply
        if address not in tx.recipients:
            tx.recipients.append(address)
            if params:
                tx.recipient_params[address] = params
        await self._journal(qe.RecipientAccepted(at=now, session_id=self.id, address=address))
        return reply

    async def _message_end(self, bare_line_endings: bool, long_line: bool) -> Reply:
        tx, self.tx = self.tx, None
        assert tx is not None
        started = time.perf_counter()
        try:
            reply = await self._accept(tx, bare_line_endings, long_line)
        finally:
            tx.body.close()  # a spill file's space returns at once
        seconds = time.perf_counter() - started
        telemetry.metrics.message_end(reply, listener=self.listener.name, size=tx.body.size, recipients=len(tx.recipients), seconds=seconds)
        await self._journal(qe.DataReceived(at=time.time(), session_id=self.id, size=tx.body.size, reply=str(reply)))
        return reply

    async def _accept(self, tx: Transaction, bare_line_endings: bool, long_line: bool) -> Reply:
        if tx.body.too_big:
            return replies.MESSAGE_TOO_BIG
        if tx.body.no_room:
            return replies.STORAGE_FULL
        if long_line:
            return replies.line_too_long(self.config.limits.line_length)
        if bare_line_endings and self.config.smtp.bare_line_endings == "reject":
            return replies.BARE_LINE_ENDING_IN_DATA
        if tx.holds.denied is not None:
            return tx.holds.denied.answer
        # A BDAT message may end without a CRLF: stored with one, as Postfix does.
        message = await tx.body.message(normalize=bare_line_endings, final_crlf=True)
        trusted = telemetry.enabled() and self.config.telemetry.traceparent and checks.trusted(self.ctx, self.settings.relay_networks)
        scope, continued = telemetry.spans.message(message.head, trusted=trusted)
        with scope as span:
            reply = await self._queue(tx, message, span, continued)
            telemetry.spans.verdict(span, reply)
            return reply

    async def _queue(self, tx: Transaction, message: Message, span: Span, continued: bool) -> Reply:
        """The data stage, then the message into the journal: its reply."""
        actions = []
        if self.ctx.actions or self.stages.active("data"):
            self.ctx.message = message
            verdict = await self.stages.run("data", tx.holds)
            if verdict.refuses:
                return verdict.answer
            actions, self.ctx.actions = self.ctx.actions, []
            apply_actions(self.ctx, actions)
            message = self.ctx.message  # with the rules' edits
            tx.reverse_path, tx.recipients = self.ctx.sender or "", list(self.ctx.recipients)
            if not tx.recipients:
                return replies.NO_RECIPIENTS_LEFT
        now, queue_id = time.time(), ids.new_id()
        queued = intake.message(
            queue_id=queue_id,
            session_id=self.id,
            arrival=self._arrival(tx),
            reverse_path=tx.reverse_path,
            recipients=tx.recipients,
            recipient_params=tx.recipient_params,
            mail_params=tx.params,
            message=message,
            follow=[a.event(at=now, session_id=self.id, queue_id=queue_id) for a in actions],
            quarantine=tx.holds.quarantine,
            postq=self.settings.postq_due(self.ctx, tx.recipients, faccepted=self.stages.faccepted),
            trace_context=telemetry.current_context(span),
            trace_continued=continued,
            now=now,
        )
        try:
            # Durable before 250: this await returns only after the synced commit.
            with telemetry.spans.leaf(telemetry.SPAN_COMMIT):
                position = (await self.writer.append_group(queued.appends, durable=True))[0]
        except JournalFull:
            return replies.STORAGE_FULL
        except JournalError as exc:
            log.error("session %s: cannot queue the message: %s", self.id, exc)
            return replies.LOCAL_ERROR
        self.errors.delivered()
        accepted = queued.accepted
        telemetry.spans.identify(span, queue_id, accepted.message_id, accepted.size, len(tx.recipients), self.writer.commit_of(position))
        log.info(
            "%s: from=<%s> to=%s size=%d session=%s", queue_id, tx.reverse_path, ",".join(tx.recipients), queued.accepted.size, self.id
        )
        for save in exports(actions, queued.accepted, queued.parts, stage="data"):
            await trio.to_thread.run_sync(save)  # once the message is durable; the 250 waits for the file
        return replies.queued(queue_id)

    def _arrival(self, tx: Transaction) -> Arrival:
        return Arrival(
            helo=self.helo,
            client=self.peer.host,
            hostname=self.config.hostname,
            esmtp=self.conn.esmtp,
            smtputf8="SMTPUTF8" in tx.params,
            tls=self.tls_info if self.conn.tls else None,
            authenticated=bool(self.ctx.auth),
        )
