"""One SMTP session: drives the sans-IO ServerConnection over a trio stream.

It reads bytes, answers each event, journals what happened, and flushes replies only when
the peer's input is drained (RFC 2920: a pipelined batch is answered in one write). The
250 to DATA is sent only after message.accepted is durable in the journal.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import trio
from opentelemetry import propagate, trace
from vsmtp_journal import Append, GroupCommitWriter, JournalError, JournalFull

from .. import ids, telemetry
from ..config import ListenerConfig
from ..queue import events as qe
from ..queue import export, policy
from ..rules.context import Context, Message, apply_actions, endpoint
from ..rules.engine import HookFailed
from ..rules.verdicts import NEXT, Verdict
from ..smtp import events as ev
from ..smtp import replies, sasl
from ..smtp.replies import Reply
from ..smtp.server import Extensions, ServerConnection
from ..smtp.states import State
from .tls import describe

if TYPE_CHECKING:
    from .server import Settings

log = logging.getLogger(__name__)

READ_SIZE = 65536
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(.*?)\r?$", re.IGNORECASE | re.MULTILINE)
_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")
_IN_TRANSACTION = (State.MAIL, State.RCPT, State.DATA, State.BDAT)
# Password checks at once, per process: each scrypt takes 16 MiB and tens of milliseconds, so
# a flood of AUTH attempts waits its turn instead of taking the memory or the threads.
_AUTH_CHECKS = trio.CapacityLimiter(4)


@dataclass(slots=True)
class Transaction:
    """What the client has said since MAIL FROM."""

    reverse_path: str
    params: dict[str, str | None]
    recipients: list[str] = field(default_factory=list)
    recipient_params: dict[str, dict[str, str | None]] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    too_big: bool = False
    denied: Verdict | None = None  # a deny (rcpt stage) holds for the rest of the transaction
    quarantine: tuple[str, str] = ("", "")  # (queue, by): where a rule sent the message


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    host: str
    port: int


class Session:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        settings: Settings,
        listener: ListenerConfig,
        writer: GroupCommitWriter,
        peer: Peer,
        local: Peer,
        on_last_reply: Callable[[], None] = lambda: None,
    ) -> None:
        self.stream = stream
        # Called before the session's last reply (221, 421) goes out: a client that reconnects
        # the moment it reads it must not find its old session still counted against its limit.
        self.on_last_reply = on_last_reply
        self.settings = settings
        self.config = settings.config
        self.listener = listener
        self.writer = writer
        self.peer = peer
        self.local = local
        self.relay_allowed = policy.may_relay(peer.host, settings.relay_networks)  # decided once per client
        self.id = ids.new_id()
        limits = self.config.limits
        mechanisms = self.config.auth.mechanisms if settings.passwords is not None and listener.auth else ()
        self.conn = ServerConnection(
            extensions=Extensions(max_message_size=limits.message_size, starttls=listener.role != "submissions", auth=mechanisms),
            max_text_line=limits.line_length,
            tls=False,
        )
        self.helo = ""
        self.tls_info: tuple[str, str, int] | None = None
        self.tx: Transaction | None = None
        self.stages = settings.stages
        self.ctx = Context(
            session_id=self.id,
            client=endpoint(peer.host, peer.port),
            server=endpoint(local.host, local.port),
            listener=listener.name,
            role=listener.role,
            local_domains=policy.local_domains(self.config),
        )
        self.denied: Verdict | None = None  # a deny at connect or helo holds for the session
        self.faccepted = False  # faccept: no rule, plugin or check runs for the rest of the session
        self.quarantine: tuple[str, str] = ("", "")  # a quarantine before MAIL holds for every message
        self.errors = 0
        self._sasl: sasl.Exchange | None = None  # the AUTH exchange in progress
        self._sasl_mechanism = ""
        self.auth_failures = 0
        self._out = bytearray()
        self._session_deadline = trio.current_time() + limits.session_duration
        self._shutdown_deadline: float | None = None
        self._recv_scope: trio.CancelScope | None = None

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        with telemetry.tracer().start_as_current_span(
            telemetry.SPAN_SESSION,
            attributes={"net.peer.ip": self.peer.host, "net.peer.port": self.peer.port, "vsmtp.listener": self.listener.name},
        ) as span:
            span.set_attribute("vsmtp.session_id", self.id)
            reason = "error"
            try:
                implicit = self.listener.role == "submissions"
                if implicit and not await self._start_tls():
                    reason = "tls handshake failed"
                    return
                await self._journal(
                    qe.SessionOpened(
                        at=time.time(),
                        session_id=self.id,
                        listener=self.listener.name,
                        peer_host=self.peer.host,
                        peer_port=self.peer.port,
                        local_host=self.local.host,
                        local_port=self.local.port,
                        tls=implicit,
                    )
                )
                if implicit:
                    self.conn.tls = self.ctx.tls = True
                    self.ctx.tls_version = self.tls_info[0] if self.tls_info else ""
                    await self._journal_tls()
                reason = await self._converse()
            except trio.BrokenResourceError:
                reason = "connection lost"
            except trio.Cancelled:
                reason = "shutdown"
                raise
            finally:
                span.set_attribute("vsmtp.close_reason", reason)
                with trio.CancelScope(shield=True):
                    try:
                        await self._journal(qe.SessionClosed(at=time.time(), session_id=self.id, reason=reason))
                    except JournalError:
                        log.debug("session %s: session.closed not journaled (the writer has stopped)", self.id)
                    await trio.aclose_forcefully(self.stream)

    def request_shutdown(self, deadline: float) -> None:
        """SIGTERM: finish an open transaction by `deadline`; an idle session closes at once."""
        now = trio.current_time()
        self._shutdown_deadline = deadline if self._in_transaction() else now
        if self._recv_scope is not None:
            self._recv_scope.deadline = min(self._recv_scope.deadline, self._shutdown_deadline)

    def _in_transaction(self) -> bool:
        return self.conn.state in _IN_TRANSACTION

    async def _converse(self) -> str:
        verdict = await self._stage("connect")
        if verdict.kind in ("deny", "reject"):
            self._out += self.conn.send(replies.HOOK_FAILED_AT_CONNECT if verdict.answer is replies.HOOK_FAILED else verdict.answer)
            self.on_last_reply()
            await self._flush()
            return "denied at connect"
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
                self._data_chunk(event.data)
                continue
            assert event is not ev.PAUSED, "every event is answered before the next is read"
            reply = await self._answer(event)
            reply = await self._count_errors(reply)
            self._out += self.conn.send(reply)
            if isinstance(event, ev.StartTls) and reply.positive:
                await self._flush()
                if not await self._start_tls():
                    return "tls handshake failed"
                await self._journal_tls()
                self.helo, self.tx = "", None
                self.ctx.tls, self.ctx.tls_version, self.ctx.helo = True, self.tls_info[0] if self.tls_info else "", ""
                self.ctx.auth = ""  # as the connection forgets it (RFC 3207 4.2); AUTH needs TLS, so there was none
                self.ctx.new_transaction()
            if self.conn.state is State.CLOSED:
                self.on_last_reply()
                await self._flush()
                if isinstance(event, ev.Quit):
                    return "quit"
                return "too many errors" if reply == replies.TOO_MANY_ERRORS else f"closed after {reply.code}"

    async def _receive(self) -> str | None:
        """Flush, then read more input. Returns why the session must close, or None."""
        if self._shutdown_deadline is not None and not self._in_transaction():
            return await self._close_with(replies.SHUTTING_DOWN, "shutdown")
        await self._flush()
        limits = self.config.limits
        waiting_for_data = self.conn.state is State.DATA or self.conn.state is State.BDAT
        timeout = limits.data_timeout if waiting_for_data else limits.command_timeout
        deadline = min(trio.current_time() + timeout, self._session_deadline)
        if self._shutdown_deadline is not None:
            deadline = min(deadline, self._shutdown_deadline)
        data: bytes | bytearray = b""
        with trio.CancelScope(deadline=deadline) as scope:
            self._recv_scope = scope
            data = await self.stream.receive_some(READ_SIZE)
        self._recv_scope = None
        if scope.cancelled_caught:
            now = trio.current_time()
            if self._shutdown_deadline is not None and now >= self._shutdown_deadline:
                return await self._close_with(replies.SHUTTING_DOWN, "shutdown")
            if now >= self._session_deadline:
                return await self._close_with(replies.SESSION_TOO_LONG, "session too long")
            return await self._close_with(replies.TIMEOUT, "timeout")
        self.conn.receive_data(data)
        return None

    async def _close_with(self, reply: Reply, reason: str) -> str:
        self._out += reply.to_bytes()
        with trio.move_on_after(5):
            await self._flush()
        return reason

    async def _flush(self) -> None:
        if self._out:
            data, self._out = bytes(self._out), bytearray()
            await self.stream.send_all(data)

    async def _count_errors(self, reply: Reply) -> Reply:
        """Postfix's soft and hard error limits: delay replies past the first, close past the second."""
        if reply.code < 400 or reply.code == 421:
            return reply
        self.errors += 1
        limits = self.config.limits
        if self.errors >= limits.hard_errors:
            return replies.TOO_MANY_ERRORS
        if self.errors > limits.soft_errors:
            await self._flush()
            await trio.sleep(limits.error_delay * (self.errors - limits.soft_errors))
        return reply

    async def _journal(self, event: qe.JournalEvent, *, blobs: dict[bytes, bytes] | None = None, durable: bool = False) -> int | None:
        tag, version, payload = qe.encode(event)
        return await self.writer.append(tag, version, payload, blobs=blobs, index=qe.index_keys(event), durable=durable)

    # -- rules and plugins -------------------------------------------------------------------

    async def _stage(self, stage: str, **kwargs: object) -> Verdict:
        """Run a stage's rules and plugins (rules/engine.py); journal a verdict other than next.
        A hook that raised comes back as a refusal of this command only (451 4.3.0)."""
        if self.faccepted or not self.stages.active(stage):
            return NEXT
        try:
            verdict = await self.stages.run(stage, self.ctx, **kwargs)
        except HookFailed as exc:
            verdict = Verdict("reject", replies.HOOK_FAILED, by=exc.by)
            await self._journal_verdict(stage, verdict, "error")
            return verdict
        if verdict.kind != "next":
            await self._journal_verdict(stage, verdict, verdict.kind)
        if verdict.kind == "faccept":
            self.faccepted = True
        return verdict

    async def _journal_verdict(self, stage: str, verdict: Verdict, kind: str) -> None:
        recipient = self.ctx.recipient if stage == "rcpt" else ""
        await self._journal(verdict.event(at=time.time(), session_id=self.id, stage=stage, recipient=recipient, kind=kind))

    # -- TLS ------------------------------------------------------------------------------

    async def _start_tls(self) -> bool:
        """Handshake as the TLS server on our stream; False if it failed (the session ends)."""
        ssl_stream = trio.SSLStream(self.stream, self.settings.tls[self.listener.name], server_side=True)
        try:
            with trio.fail_after(self.config.tls.handshake_timeout):
                await ssl_stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            log.info("session %s: TLS handshake with %s failed: %s", self.id, self.peer.host, exc.__cause__ or exc)
            return False
        self.stream = ssl_stream
        ssl_object = ssl_stream._ssl_object  # trio exposes the version and cipher only this way
        self.tls_info = describe(ssl_object)
        return True

    async def _journal_tls(self) -> None:
        assert self.tls_info is not None
        version, cipher, bits = self.tls_info
        await self._journal(qe.TlsStarted(at=time.time(), session_id=self.id, version=version, cipher=cipher, bits=bits))

    # -- answers ---------------------------------------------------------------------------

    async def _answer(self, event: ev.Event) -> Reply:
        now = time.time()
        match event:
            case ev.Ehlo(domain=name) | ev.Helo(domain=name):
                self.helo, self.tx = name, None
                verb = "EHLO" if isinstance(event, ev.Ehlo) else "HELO"
                await self._journal(qe.HeloReceived(at=now, session_id=self.id, verb=verb, name=name))
                self.ctx.helo = name
                self.ctx.new_transaction()
                verdict = await self._stage("helo")
                if verdict.kind == "deny":
                    self.denied = verdict  # every later MAIL of the session gets the same answer
                if verdict.kind in ("deny", "reject"):
                    return verdict.answer
                if verdict.kind == "quarantine":
                    self.quarantine = (verdict.queue, verdict.by)
                if verb == "HELO":
                    return replies.helo(self.config.hostname)
                return replies.ehlo(self.config.hostname, name, self.conn.extensions.keywords(tls_active=self.conn.tls))
            case ev.MailFrom(reverse_path=path, params=params):
                if self.listener.role == "submission" and not self.conn.tls:
                    return replies.TLS_REQUIRED  # RFC 8314 / Postfix smtpd_tls_security_level=encrypt
                if self.listener.require_auth and not self.ctx.auth:
                    return replies.AUTH_REQUIRED
                if not self._room_for(params):
                    await self._journal(qe.MailRefused(at=now, session_id=self.id, reverse_path=path, reply=str(replies.STORAGE_FULL)))
                    return replies.STORAGE_FULL
                if self.denied is not None:
                    return self.denied.answer
                return await self._mail(path, dict(params), now=now)
            case ev.RcptTo(forward_path=address, params=params):
                return await self._rcpt(address, dict(params), now=now)
            case ev.Data():
                return replies.START_DATA
            case ev.Bdat():
                tx = self.tx
                assert tx is not None
                if tx.too_big:  # RFC 3030: a refused chunk ends the transaction
                    self.tx = None
                    return replies.MESSAGE_TOO_BIG
                return replies.CHUNK_OK
            case ev.DataEnd(bare_line_endings=bare, long_line=long) | ev.BdatLast(bare_line_endings=bare, long_line=long):
                return await self._message_end(bare, long)
            case ev.StartTls():
                return replies.READY_FOR_TLS
            case ev.Auth(mechanism=mechanism, initial=initial):
                self._sasl, self._sasl_mechanism = sasl.start(mechanism), mechanism
                return await self._auth_step(initial)
            case ev.AuthResponse(cancelled=True):
                self._sasl = None
                return replies.AUTH_CANCELLED
            case ev.AuthResponse(data=data):
                return await self._auth_step(data)
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
                self._sasl = None  # a refused line in an AUTH exchange ends it (the connection is back in READY)
                return reply
        raise AssertionError(f"unhandled event {event!r}")

    # -- AUTH (RFC 4954) ------------------------------------------------------------------

    async def _auth_step(self, response: bytes | None) -> Reply:
        """One response of the exchange: a 334 challenge back, or the credentials checked."""
        assert self._sasl is not None
        try:
            step = self._sasl.step(response)
        except sasl.SaslError as exc:
            return await self._auth_failed(replies.AUTH_FAILED, "", str(exc))
        if isinstance(step, bytes):
            return replies.challenge(step)
        self._sasl = None
        passwords = self.settings.passwords
        assert passwords is not None, "AUTH is offered only with a password file"
        if not await trio.to_thread.run_sync(passwords.check, step.username, step.password, limiter=_AUTH_CHECKS):
            return await self._auth_failed(replies.AUTH_FAILED, step.username, "wrong user name or password")
        self.ctx.auth = step.username
        verdict = await self._stage("auth")
        if verdict.kind in ("deny", "reject"):
            self.ctx.auth = ""
            if verdict.kind == "deny":  # every later MAIL of the session is refused too, with a MAIL reply
                text = verdict.answer.text
                mail_reply = Reply.of(450, "4.7.1", text) if verdict.answer.code < 500 else Reply.of(554, "5.7.1", text)
                self.denied = Verdict("deny", mail_reply, by=verdict.by)
            if verdict.answer is replies.HOOK_FAILED:
                return await self._auth_failed(replies.AUTH_TEMPORARY, step.username, f"{verdict.by} raised", password_ok=True)
            return await self._auth_failed(verdict.answer, step.username, f"refused by {verdict.by}", password_ok=True)
        if verdict.kind == "quarantine":
            self.quarantine = (verdict.queue, verdict.by)
        await self._journal(qe.Authenticated(at=time.time(), session_id=self.id, mechanism=self._sasl_mechanism, username=step.username))
        log.info("session %s: [%s] authenticated as %s (%s)", self.id, self.peer.host, step.username, self._sasl_mechanism)
        return replies.AUTH_OK

    async def _auth_failed(self, reply: Reply, username: str, reason: str, *, password_ok: bool = False) -> Reply:
        """Journal and log a failed AUTH (never the password); past auth.max_failures, 421."""
        self._sasl = None
        self.auth_failures += 1
        if self.auth_failures >= self.config.auth.max_failures:
            reply = replies.TOO_MANY_AUTH_FAILURES
        event = qe.AuthFailed(
            at=time.time(), session_id=self.id, mechanism=self._sasl_mechanism, username=username, reply=str(reply), password_ok=password_ok
        )
        await self._journal(event)
        # One line per failure with the client's address, as fail2ban and the like expect.
        log.warning("session %s: [%s] AUTH %s failed for %r: %s", self.id, self.peer.host, self._sasl_mechanism, username, reason)
        return reply

    async def _mail(self, path: str, params: dict[str, str | None], *, now: float) -> Reply:
        tx = Transaction(reverse_path=path, params=params, quarantine=self.quarantine)
        await self._journal(qe.MailReceived(at=now, session_id=self.id, reverse_path=path, params=params))
        self.ctx.new_transaction()
        self.ctx.sender, self.ctx.mail_params, self.ctx.recipients = path, tx.params, tx.recipients
        verdict = await self._stage("mail")
        if verdict.kind in ("deny", "reject"):
            return verdict.answer
        if verdict.kind == "quarantine":
            tx.quarantine = (verdict.queue, verdict.by)
        self.tx = tx
        return replies.SENDER_OK

    async def _rcpt(self, address: str, params: dict[str, str | None], *, now: float) -> Reply:
        tx = self.tx
        assert tx is not None
        if address in tx.recipients:
            reply = replies.RECIPIENT_OK  # a duplicate RCPT is accepted once
        elif len(tx.recipients) >= self.config.limits.recipients:
            reply = replies.TOO_MANY_RECIPIENTS  # RFC 5321 4.5.3.1.10: 452, the client sends the rest later
        elif tx.denied is not None:
            reply = tx.denied.answer
        else:
            self.ctx.recipient = address
            verdict = await self._stage("rcpt", recipient=address)
            self.ctx.recipient = ""
            if verdict.kind == "deny":
                tx.denied = verdict
            if verdict.kind == "quarantine":
                tx.quarantine = (verdict.queue, verdict.by)
            if verdict.kind in ("deny", "reject"):
                reply = verdict.answer
            elif verdict.kind in ("accept", "faccept") or self.faccepted:
                reply = replies.RECIPIENT_OK  # settled by a rule: vsmtp's own checks are skipped
            else:
                reply = self._check_recipient(address)
        if reply is not replies.RECIPIENT_OK:
            await self._journal(qe.RecipientRejected(at=now, session_id=self.id, address=address, reply=str(reply)))
            return reply
        if address not in tx.recipients:
            tx.recipients.append(address)
            if params:
                tx.recipient_params[address] = params
        await self._journal(qe.RecipientAccepted(at=now, session_id=self.id, address=address))
        return reply

    def _room_for(self, params: Mapping[str, str | None]) -> bool:
        """Postfix's queue_minfree check: room for min_free, plus 1.5 times a declared SIZE."""
        size = params.get("SIZE") or "0"
        declared = int(size) if size.isdigit() else 0
        return self.writer.has_room(self.config.journal.min_free + declared * 3 // 2)

    def _check_recipient(self, address: str) -> Reply:
        # An authenticated client may relay, as one in relay.networks (Postfix's permit_sasl_authenticated).
        verdict = policy.recipient_verdict(address, self.config, relay_allowed=self.relay_allowed or bool(self.ctx.auth))
        if verdict == "relay denied":
            return replies.RELAY_DENIED
        if verdict == "unknown user":
            return replies.NO_SUCH_USER
        return replies.RECIPIENT_OK

    def _data_chunk(self, data: bytes) -> None:
        tx = self.tx
        if tx is None:
            return  # a chunk of a transaction already refused
        tx.size += len(data)
        limit = self.config.limits.message_size
        if limit and tx.size > limit:
            tx.too_big, tx.chunks = True, []  # RFC 1870 6.3: read to the end, then refuse
        elif not tx.too_big:
            tx.chunks.append(data)

    async def _message_end(self, bare_line_endings: bool, long_line: bool) -> Reply:
        tx, self.tx = self.tx, None
        assert tx is not None
        reply = await self._accept(tx, bare_line_endings, long_line)
        await self._journal(qe.DataReceived(at=time.time(), session_id=self.id, size=tx.size, reply=str(reply)))
        return reply

    async def _accept(self, tx: Transaction, bare_line_endings: bool, long_line: bool) -> Reply:
        if tx.too_big:
            return replies.MESSAGE_TOO_BIG
        if long_line:
            return replies.line_too_long(self.config.limits.line_length)
        body = b"".join(tx.chunks)
        if bare_line_endings:
            if self.config.smtp.bare_line_endings == "reject":
                return replies.BARE_LINE_ENDING_IN_DATA
            body = _ANY_LINE_END.sub(b"\r\n", body)
        if tx.denied is not None:
            return tx.denied.answer
        actions = []
        if self.ctx.actions or self.stages.active("data"):
            self.ctx.message = Message(body)
            verdict = await self._stage("data")
            if verdict.kind in ("deny", "reject"):
                return verdict.answer
            if verdict.kind == "quarantine":
                tx.quarantine = (verdict.queue, verdict.by)
            actions, self.ctx.actions = self.ctx.actions, []
            apply_actions(self.ctx, actions)
            body = self.ctx.message.raw  # with the rules' edits
            tx.reverse_path, tx.recipients = self.ctx.sender or "", list(self.ctx.recipients)
            if not tx.recipients:
                return replies.NO_RECIPIENTS_LEFT
        now = time.time()
        queue_id = ids.new_id()
        blob = self._received_header(queue_id, tx, now) + body
        header_end = body.find(b"\r\n\r\n")
        found = _MESSAGE_ID.search(body, 0, header_end + 2 if header_end >= 0 else len(body))
        trace_context: dict[str, str] = {}
        propagate.inject(trace_context)
        event = qe.MessageAccepted(
            at=now,
            queue_id=queue_id,
            session_id=self.id,
            reverse_path=tx.reverse_path,
            recipients=tuple(tx.recipients),
            recipient_params=tx.recipient_params,
            blob=queue_id.encode(),
            size=len(blob),
            mail_params=tx.params,
            message_id=found.group(1).decode("utf-8", "replace").strip() if found else "",
            trace_context=trace_context,
            postq=self.stages.active("postq") and not self.faccepted,
        )
        follow: list[qe.JournalEvent] = [a.event(at=now, session_id=self.id, queue_id=queue_id) for a in actions]
        if tx.quarantine[0]:
            follow.append(qe.MessageQuarantined(at=now, queue_id=queue_id, queue=tx.quarantine[0], by=tx.quarantine[1]))
        position: int | None
        try:
            # Durable before 250: this await returns only after the synced commit.
            if follow:  # the message, its quarantine and the rules' edits: all or nothing
                group = [Append(*qe.encode(event), blobs={event.blob: blob}, index=qe.index_keys(event))]
                group += [Append(*qe.encode(e)) for e in follow]
                position = (await self.writer.append_group(group, durable=True))[0]
            else:
                position = await self._journal(event, blobs={event.blob: blob}, durable=True)
        except JournalFull:
            return replies.STORAGE_FULL
        except JournalError as exc:
            log.error("session %s: cannot queue the message: %s", self.id, exc)
            return replies.LOCAL_ERROR
        self.errors = 0  # as Postfix: the error limits count errors without delivering mail
        commit = self.writer.commit_of(position or 0)
        if commit is not None:
            span = trace.get_current_span()
            span.set_attribute("vsmtp.journal.commit_seconds", commit.seconds)
            span.set_attribute("vsmtp.journal.batch_records", commit.records)
        log.info("%s: from=<%s> to=%s size=%d session=%s", queue_id, tx.reverse_path, ",".join(tx.recipients), len(blob), self.id)
        for action in actions:
            if action.name == "export":  # once the message is durable; the 250 waits for the file
                directory, form = action.args
                save = partial(export.save, directory, form, export.Envelope.of(event), blob, stage="data", by=action.by)
                await trio.to_thread.run_sync(save)
        return replies.queued(queue_id)

    def _received_header(self, queue_id: str, tx: Transaction, now: float) -> bytes:
        # RFC 5321 4.4 trace information; "with" keywords per RFC 3848 and RFC 6531.
        protocol = "ESMTP" if self.conn.esmtp else "SMTP"
        if "SMTPUTF8" in tx.params:
            protocol = "UTF8SMTP"
        if self.conn.tls:
            protocol += "S"
        if self.ctx.auth:
            protocol += "A"  # RFC 3848: ESMTPA, ESMTPSA (who logged in is not said, as Postfix by default)
        literal = f"IPv6:{self.peer.host}" if ":" in self.peer.host else self.peer.host
        tls = ""
        if self.tls_info is not None:
            version, cipher, bits = self.tls_info
            tls = f"\r\n\t(using {version} with cipher {cipher} ({bits}/{bits} bits))"
        recipient = f"\r\n\tfor <{tx.recipients[0]}>" if len(tx.recipients) == 1 else ""
        date = email.utils.formatdate(now, localtime=True)
        return (
            f"Received: from {self.helo} ([{literal}]){tls}\r\n"
            f"\tby {self.config.hostname} (vsmtp) with {protocol} id {queue_id}{recipient};\r\n"
            f"\t{date}\r\n"
        ).encode()
