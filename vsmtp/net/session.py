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
from dataclasses import dataclass, field

import trio
from opentelemetry import propagate
from vsmtp_journal import GroupCommitWriter, JournalError, JournalFull

from .. import ids, telemetry
from ..config import Config, ListenerConfig
from ..queue import events as qe
from ..queue import policy
from ..smtp import events as ev
from ..smtp import replies
from ..smtp.replies import Reply
from ..smtp.server import Extensions, ServerConnection
from ..smtp.states import State

log = logging.getLogger(__name__)

READ_SIZE = 65536
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(.*?)\r?$", re.IGNORECASE | re.MULTILINE)


@dataclass(slots=True)
class Transaction:
    """What the client has said since MAIL FROM."""

    reverse_path: str
    params: dict[str, str | None]
    recipients: list[str] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    too_big: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    host: str
    port: int


class Session:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        config: Config,
        listener: ListenerConfig,
        writer: GroupCommitWriter,
        peer: Peer,
        local: Peer,
    ) -> None:
        self.stream = stream
        self.config = config
        self.listener = listener
        self.writer = writer
        self.peer = peer
        self.local = local
        self.id = ids.new_id()
        self.conn = ServerConnection(extensions=Extensions(max_message_size=config.limits.message_size))
        self.helo = ""
        self.tx: Transaction | None = None
        self._out = bytearray()

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        with telemetry.tracer().start_as_current_span(
            telemetry.SPAN_SESSION,
            attributes={"net.peer.ip": self.peer.host, "net.peer.port": self.peer.port, "vsmtp.listener": self.listener.name},
        ) as span:
            span.set_attribute("vsmtp.session_id", self.id)
            reason = "error"
            try:
                await self._journal(
                    qe.SessionOpened(
                        at=time.time(),
                        session_id=self.id,
                        listener=self.listener.name,
                        peer_host=self.peer.host,
                        peer_port=self.peer.port,
                        local_host=self.local.host,
                        local_port=self.local.port,
                    )
                )
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

    async def _converse(self) -> str:
        self._out += self.conn.send(replies.greeting(self.config.hostname))
        while True:
            event = self.conn.next_event()
            if event is ev.NEED_DATA:
                await self._flush()
                timeout = self.config.limits.data_timeout if self.conn.state is State.DATA else self.config.limits.command_timeout
                data: bytes | bytearray = b""
                with trio.move_on_after(timeout) as scope:
                    data = await self.stream.receive_some(READ_SIZE)
                if scope.cancelled_caught:
                    self._out += replies.TIMEOUT.to_bytes()
                    await self._flush()
                    return "timeout"
                self.conn.receive_data(data)
                continue
            if isinstance(event, ev.ConnectionClosed):
                return "peer closed"
            if isinstance(event, ev.DataChunk):
                self._data_chunk(event.data)
                continue
            assert event is not ev.PAUSED, "every event is answered before the next is read"
            reply = await self._answer(event)
            self._out += self.conn.send(reply)
            if self.conn.state is State.CLOSED:
                await self._flush()
                return "quit" if isinstance(event, ev.Quit) else f"closed after {reply.code}"

    async def _flush(self) -> None:
        if self._out:
            data, self._out = bytes(self._out), bytearray()
            await self.stream.send_all(data)

    async def _journal(self, event: qe.JournalEvent, *, durable: bool = False) -> int | None:
        tag, version, payload = qe.encode(event)
        return await self.writer.append(tag, version, payload, durable=durable)

    # -- answers ---------------------------------------------------------------------------

    async def _answer(self, event: ev.Event) -> Reply:
        now = time.time()
        match event:
            case ev.Ehlo(domain=name) | ev.Helo(domain=name):
                self.helo, self.tx = name, None
                verb = "EHLO" if isinstance(event, ev.Ehlo) else "HELO"
                await self._journal(qe.HeloReceived(at=now, session_id=self.id, verb=verb, name=name))
                if verb == "HELO":
                    return replies.helo(self.config.hostname)
                return replies.ehlo(self.config.hostname, name, self.conn.extensions.keywords())
            case ev.MailFrom(reverse_path=path, params=params):
                self.tx = Transaction(reverse_path=path, params=dict(params))
                await self._journal(qe.MailReceived(at=now, session_id=self.id, reverse_path=path, params=params))
                return replies.SENDER_OK
            case ev.RcptTo(forward_path=address):
                return await self._rcpt(address, now=now)
            case ev.Data():
                return replies.START_DATA
            case ev.DataEnd(bare_line_endings=bare):
                return await self._data_end(bare)
            case ev.Rset():
                self.tx = None
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
                return reply
        raise AssertionError(f"unhandled event {event!r}")

    async def _rcpt(self, address: str, *, now: float) -> Reply:
        assert self.tx is not None
        reply = self._check_recipient(address)
        if reply is not replies.RECIPIENT_OK:
            await self._journal(qe.RecipientRejected(at=now, session_id=self.id, address=address, reply=str(reply)))
            return reply
        if address not in self.tx.recipients:  # a duplicate RCPT is accepted once
            self.tx.recipients.append(address)
        await self._journal(qe.RecipientAccepted(at=now, session_id=self.id, address=address))
        return reply

    def _check_recipient(self, address: str) -> Reply:
        user, domain = policy.local_user(address)
        if domain and not policy.is_local_domain(domain, self.config):
            return replies.RELAY_DENIED  # no relaying yet: remote delivery is not built
        if not policy.local_recipient_ok(user, self.config):
            return replies.NO_SUCH_USER
        return replies.RECIPIENT_OK

    def _data_chunk(self, data: bytes) -> None:
        tx = self.tx
        assert tx is not None
        tx.size += len(data)
        limit = self.config.limits.message_size
        if limit and tx.size > limit:
            tx.too_big, tx.chunks = True, []  # RFC 1870 6.3: read to the end, then refuse
        elif not tx.too_big:
            tx.chunks.append(data)

    async def _data_end(self, bare_line_endings: bool) -> Reply:
        tx, self.tx = self.tx, None
        assert tx is not None
        if tx.too_big:
            return replies.MESSAGE_TOO_BIG
        if bare_line_endings:
            return replies.BARE_LINE_ENDING_IN_DATA
        now = time.time()
        queue_id = ids.new_id()
        received = self._received_header(queue_id, tx, now)
        body = b"".join(tx.chunks)
        blob = received + body
        found = _MESSAGE_ID.search(body, 0, body.find(b"\r\n\r\n") + 2 if b"\r\n\r\n" in body else len(body))
        trace_context: dict[str, str] = {}
        propagate.inject(trace_context)
        event = qe.MessageAccepted(
            at=now,
            queue_id=queue_id,
            session_id=self.id,
            reverse_path=tx.reverse_path,
            recipients=tuple(tx.recipients),
            blob=queue_id.encode(),
            size=len(blob),
            mail_params=tx.params,
            message_id=found.group(1).decode("utf-8", "replace").strip() if found else "",
            trace_context=trace_context,
        )
        tag, version, payload = qe.encode(event)
        try:
            # Durable before 250: this await returns only after the synced commit.
            await self.writer.append(tag, version, payload, blobs={event.blob: blob}, durable=True)
        except JournalFull:
            return replies.STORAGE_FULL
        except JournalError as exc:
            log.error("session %s: cannot queue the message: %s", self.id, exc)
            return replies.LOCAL_ERROR
        log.info("%s: from=<%s> to=%s size=%d session=%s", queue_id, tx.reverse_path, ",".join(tx.recipients), len(blob), self.id)
        return replies.queued(queue_id)

    def _received_header(self, queue_id: str, tx: Transaction, now: float) -> bytes:
        # RFC 5321 4.4 trace information; "with" keywords per RFC 3848 and RFC 6531.
        protocol = "ESMTP" if self.conn.esmtp else "SMTP"
        if "SMTPUTF8" in tx.params:
            protocol = "UTF8SMTP"
        literal = f"IPv6:{self.peer.host}" if ":" in self.peer.host else self.peer.host
        recipient = f"\r\n\tfor <{tx.recipients[0]}>" if len(tx.recipients) == 1 else ""
        date = email.utils.formatdate(now, localtime=True)
        return (
            f"Received: from {self.helo} ([{literal}])\r\n"
            f"\tby {self.config.hostname} (vsmtp) with {protocol} id {queue_id}{recipient};\r\n"
            f"\t{date}\r\n"
        ).encode()
