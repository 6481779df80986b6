"""Outbound SMTP: deliver one message to the recipients of one domain, over trio.

The protocol text and reply parsing live in smtp/client.py; this module drives them:

- the domain's mail hosts come from net/dns.py, tried in order, every address of each;
  a host that refuses the connection, times out, or greets with anything but 2xx is left
  for the next one;
- EHLO, or HELO if EHLO is refused; STARTTLS as the security level says (net/tlspolicy.py:
  none, may, encrypt, verify, secure; the certificate checked at verify and secure, or
  against the host's TLSA records at dane, net/dane.py), then EHLO again; credentials only
  to a server whose certificate was verified;
- SIZE checked against the server's limit before sending; BODY=8BITMIME and SMTPUTF8 passed
  when the message needs them; an 8-bit message to a server without 8BITMIME converted to
  7 bit (mail/downgrade.py), and a message that needs what the server lacks fails;
- MAIL, every RCPT and DATA in one write when the server offers PIPELINING;
- an outcome per recipient: 2xx delivered, 4xx deferred, 5xx failed; a host that fails
  after the data was sent is not tried again (the message may have been delivered);
- timeouts per RFC 5321 4.5.3.2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import trio

from .. import telemetry
from ..mail import downgrade
from ..smtp import client as smtp
from ..smtp import replies
from ..smtp.errors import ProtocolError
from ..smtp.replies import Reply
from . import dane, tlspolicy
from .dns import Exchanger
from .tlspolicy import TlsPolicy

log = logging.getLogger(__name__)

# RFC 5321 4.5.3.2: the client's timeouts, in seconds.
TIMEOUTS = {
    "connect": 30.0,  # not in the RFC; Postfix's smtp_connect_timeout
    "greeting": 300.0,  # 4.5.3.2.1
    "command": 300.0,  # 4.5.3.2.2 (MAIL) and 4.5.3.2.3 (RCPT); also EHLO, STARTTLS
    "data_init": 120.0,  # 4.5.3.2.4
    "data_block": 180.0,  # 4.5.3.2.5
    "data_end": 600.0,  # 4.5.3.2.6
}

Status = Literal["delivered", "deferred", "failed"]


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    text: str  # what the server said, without its code (or why we could not ask)
    code: int = 0  # the server's reply code; 0: no server answered
    enhanced: str = ""  # RFC 3463, the server's or ours
    host: str = ""  # the host that gave it
    address: str = ""
    tls: bool = False
    stage: str = ""  # where it ended: connect, greeting, hello, tls, auth, mail, rcpt, data, message
    tls_result: str = ""  # how the connection's TLS went (Attempt.tls_result)

    @property
    def reply(self) -> str:
        """As the server said it: "550 5.1.1 text" (or our own words alone)."""
        return replies.said(self.code, self.enhanced, self.text)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundMessage:
    reverse_path: str
    recipients: tuple[str, ...]
    body: bytes
    smtputf8: bool = False  # the sender asked for SMTPUTF8 (or an address needs it)
    requiretls: bool = False  # RFC 8689: only to a verified server that offers REQUIRETLS, and asked of it


@dataclass(slots=True, kw_only=True)
class ClientSettings:
    helo_name: str
    port: int = 25
    implicit_tls: bool = False  # TLS from the first byte (smtps://, RFC 8314)
    tls: TlsPolicy = TlsPolicy()  # noqa: RUF009 - frozen, shared safely: the security level (net/tlspolicy.py)
    auth: tuple[str, str] | None = None  # AUTH PLAIN (RFC 4954) username and password, only to a verified server
    # Awaited after the 354 and before the data goes (recipients, host, address): the caller
    # journals that an attempt is under way, so a crash after it is known to risk a duplicate.
    before_data: Callable[[list[str], str, str], Awaitable[None]] | None = None
    cache: ConnectionCache | None = None  # keep the connection for the next message to the host
    host_limits: HostLimits | None = None  # deliveries at once to one host address, across domains
    per_host: Mapping[str, TlsPolicy] = dataclasses.field(default_factory=dict)  # a level per MX host, over `tls` (DANE)


class Failed(Exception):
    """This host did not work out; try the next one."""

    def __init__(self, text: str, *, final: bool = False, stage: str = "", said: Reply | None = None) -> None:
        super().__init__(text)
        self.text = text  # what went wrong, with the server's reply if it gave one
        self.final = final  # the data may have gone through: do not try another host
        self.tls = False  # the connection was encrypted when it failed (set where that is known)
        self.stage = stage
        self.said = said  # the reply that ended it, if a server gave one
        self.tls_result = ""  # set where the TLS of the connection is known (RFC 8460 result types)
        self.audited = ""  # MTA-STS testing: the chain did not verify (this result type); try again unverified

    def outcome(self, host: str, address: str) -> Outcome:
        """What the recipients get when this was the last host tried: deferred (the text
        holds the server's reply, if any; its enhanced status is kept apart)."""
        enhanced = (self.said.enhanced or "") if self.said is not None else ""
        return Outcome("deferred", self.text, 0, enhanced if enhanced[:1] == "4" else "", host, address, self.tls, self.stage)


class Conversation:
    """A ClientConnection (smtp/client.py) over a trio stream: it sends what the connection
    allows and reads until the replies it waits for have come, within a timeout."""

    def __init__(self, stream: trio.abc.Stream, conn: smtp.ClientConnection | None = None) -> None:
        self.stream = stream
        self.conn = conn or smtp.ClientConnection()  # an LmtpConnection for LMTP
        self.pending: list[Reply] = []
        self.tls_result = ""  # how its TLS went (RFC 8460): "success", a failure's result-type, "" : not tried

    async def replies(self, count: int, timeout: float) -> list[Reply]:
        with trio.move_on_after(timeout) as scope:
            while len(self.pending) < count:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise Failed("connection closed by the server")
                self.pending += [answer.reply for answer in self.conn.receive_data(bytes(data))]
        if scope.cancelled_caught:
            raise Failed(f"timed out after {timeout:.0f}s waiting for a reply")
        taken, self.pending = self.pending[:count], self.pending[count:]
        return taken

    async def say(self, data: bytes, timeout: float) -> Reply:
        await self.send(data, timeout)
        return (await self.replies(1, timeout))[0]

    async def send(self, data: bytes, timeout: float) -> None:
        with trio.move_on_after(timeout) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            raise Failed(f"timed out after {timeout:.0f}s sending")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One connection to one address of one host, and how it ended."""

    host: str
    address: str
    tls: bool
    reply: str  # the server's last word, or why there was none
    tls_result: str = ""  # RFC 8460's word for its TLS: "success", a failure's result-type, "" : no TLS tried


async def deliver(
    message: OutboundMessage, hosts: Sequence[Exchanger], settings: ClientSettings, attempts: list[Attempt] | None = None
) -> dict[str, Outcome]:
    """Try each host in turn until one takes the transaction; an outcome per recipient.
    Each connection tried is added to `attempts`."""
    attempts = [] if attempts is None else attempts
    last = Outcome("deferred", "no mail host to try", stage="dns")
    for exchanger in hosts:
        for address in exchanger.addresses:
            try:
                outcomes = await _one_host(message, exchanger.host, address, settings)
            except Failed as exc:
                attempts.append(Attempt(exchanger.host, address, exc.tls, exc.text, exc.tls_result))
                last = exc.outcome(exchanger.host, address)
                log.debug("delivery to %s[%s] failed: %s", exchanger.host, address, exc.text)
                if exc.final:  # the host may have the message: no other is tried
                    return dict.fromkeys(message.recipients, last)
                continue
            first = next(iter(outcomes.values()))
            said = "; ".join(sorted({o.reply for o in outcomes.values()}))
            attempts.append(Attempt(exchanger.host, address, first.tls, said, first.tls_result))
            return outcomes
    return dict.fromkeys(message.recipients, last)


@dataclass(slots=True)
class Opened:
    """A connection past its greeting, EHLO, TLS and AUTH: ready for MAIL."""

    talk: Conversation  # its ClientConnection knows the capabilities and whether TLS is on
    idle_since: float = 0.0


LOST = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError, trio.TooSlowError)


class HostLimits:
    """At most `per_host` deliveries at once to one address, whatever the domains it serves
    (many domains share a provider's mail hosts). A slot is given back when its delivery ends;
    addresses nobody waits for are forgotten."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._limits: dict[str, trio.CapacityLimiter] = {}

    @contextlib.asynccontextmanager
    async def slot(self, address: str) -> AsyncIterator[None]:
        limiter = self._limits.setdefault(address, trio.CapacityLimiter(self.per_host))
        try:
            async with limiter:
                yield
        finally:
            if limiter.borrowed_tokens == 0 and limiter.statistics().tasks_waiting == 0:
                self._limits.pop(address, None)


async def _one_host(message: OutboundMessage, host: str, address: str, settings: ClientSettings) -> dict[str, Outcome]:
    if host in settings.per_host:  # DANE decided this host's level (net/dane.py)
        settings = dataclasses.replace(settings, tls=settings.per_host[host])
    limits = settings.host_limits
    async with limits.slot(address) if limits is not None else contextlib.nullcontext():
        try:
            return await _one_host_unlimited(message, host, address, settings)
        except Failed as exc:
            if not exc.audited:
                raise
            found = exc.audited
        # MTA-STS testing (RFC 8461 5): the chain did not verify, which enforce would refuse. The
        # handshake is over: connect again without checking, deliver, and report the failure.
        unchecked = dataclasses.replace(settings, tls=dataclasses.replace(settings.tls, audit=False))
        outcomes = await _one_host_unlimited(message, host, address, unchecked)
        return {r: dataclasses.replace(o, tls_result=found) if o.tls_result == "success" else o for r, o in outcomes.items()}


async def _one_host_unlimited(message: OutboundMessage, host: str, address: str, settings: ClientSettings) -> dict[str, Outcome]:
    timeout = TIMEOUTS
    key = (host, address, settings.port, settings.implicit_tls, settings.tls, settings.auth)
    cache = settings.cache
    conn = cache.take(key) if cache is not None else None
    if conn is not None:  # reused: RSET proves it is still there (RFC 5321 4.1.1.5)
        try:
            if (await conn.talk.say(conn.talk.conn.rset(), timeout["command"])).code != 250:
                raise Failed("RSET refused", stage="mail")
        except BaseException as exc:
            await trio.aclose_forcefully(conn.talk.stream)
            if not isinstance(exc, (Failed, ProtocolError, *LOST)):
                raise  # cancelled
            conn = None
    if conn is None:
        conn = await _open(host, address, settings, timeout)
    kept = False
    try:
        with telemetry.span(telemetry.SPAN_TRANSACTION, attributes={"server.address": host, "network.peer.address": address}):
            outcomes = await _transaction(conn.talk, message, timeout, before_data=_bound(settings, host, address))
        if cache is not None and cache.put(key, conn):
            kept = True
        else:
            await say_quit(conn.talk)
    except Failed as exc:
        _encrypted(exc, conn.talk)
        raise
    except LOST as exc:
        raise _encrypted(Failed(f"connection lost: {exc}"), conn.talk) from exc
    except ProtocolError as exc:
        raise _encrypted(Failed(f"protocol error: {exc}"), conn.talk) from exc
    finally:
        if not kept:  # done, failed or cancelled: closed, unless the cache has it
            await trio.aclose_forcefully(conn.talk.stream)
    tls, result = conn.talk.conn.tls, conn.talk.tls_result
    return {r: Outcome(o.status, o.text, o.code, o.enhanced, host, address, tls, o.stage, result) for r, o in outcomes.items()}


async def _open(host: str, address: str, settings: ClientSettings, timeout: dict[str, float]) -> Opened:
    try:
        attributes = {"server.address": host, "network.peer.address": address, "server.port": settings.port}
        with telemetry.span(telemetry.SPAN_CONNECT, attributes=attributes), trio.fail_after(timeout["connect"]):
            stream: trio.abc.Stream = await trio.open_tcp_stream(address, settings.port)
    except (OSError, trio.TooSlowError) as exc:
        raise Failed(f"cannot connect: {exc}", stage="connect") from exc
    opened: Opened | None = None
    talk = Conversation(stream)
    try:
        if settings.implicit_tls:
            stream = talk.stream = await _tls(stream, host, timeout["command"], settings.tls, talk)
            talk.conn.implicit_tls()
        greeting = (await talk.replies(1, timeout["greeting"]))[0]
        if greeting.code // 100 != 2:
            raise Failed(f"greeting: {greeting}", stage="greeting", said=greeting)
        await _hello(talk, settings.helo_name, timeout["command"])
        if not talk.conn.tls and talk.conn.capabilities.has("STARTTLS") and settings.tls.level != "none":
            reply = await talk.say(talk.conn.starttls(), timeout["command"])
            if reply.code == 220:
                stream = talk.stream = await _tls(stream, host, timeout["command"], settings.tls, talk)
                talk.conn.tls_started()  # what was read before TLS is forgotten (STARTTLS injection)
                talk.pending.clear()
                await _hello(talk, settings.helo_name, timeout["command"])
        if not talk.conn.tls:
            talk.tls_result = "starttls-not-supported" if settings.tls.level != "none" else ""
        if settings.tls.required and not talk.conn.tls:
            await say_quit(talk)
            raise Failed(f"TLS is required ({settings.tls.said}) and the server does not offer STARTTLS", stage="tls")
        if settings.auth is not None:
            if not talk.conn.tls:
                await say_quit(talk)
                raise Failed("refusing to send credentials over a connection without TLS", stage="auth")
            if not settings.tls.verified:  # the configuration refuses this too (config.py)
                await say_quit(talk)
                raise Failed("refusing to send credentials to a server whose certificate was not verified", stage="auth")
            reply = await talk.say(talk.conn.auth_plain(*settings.auth), timeout["command"])
            if reply.code != 235:
                await say_quit(talk)
                raise Failed(f"AUTH: {reply}", stage="auth", said=reply)
        opened = Opened(talk)
    except Failed as exc:
        _encrypted(exc, talk)
        raise
    except LOST as exc:
        raise _encrypted(Failed(f"connection lost: {exc}"), talk) from exc
    except ProtocolError as exc:
        raise _encrypted(Failed(f"protocol error: {exc}"), talk) from exc
    finally:
        if opened is None:  # failed, or cancelled: never leave the socket open
            await trio.aclose_forcefully(stream)
    return opened


def _encrypted(failed: Failed, talk: Conversation) -> Failed:
    """`failed`, knowing whether TLS was on when it happened (journaled with the attempt), how
    its TLS went, and in which stage, when it did not say."""
    failed.tls = failed.tls or talk.conn.tls  # or a handshake done, then refused (the certificate did not do)
    failed.tls_result = talk.tls_result
    failed.stage = failed.stage or _STAGES[talk.conn.state]
    return failed


_STAGES = {
    smtp.State.GREETING: "greeting",
    smtp.State.HELLO: "hello",
    smtp.State.READY: "mail",
    smtp.State.TLS: "tls",
    smtp.State.TRANSACTION: "rcpt",
    smtp.State.BODY: "message",
    smtp.State.CLOSED: "connect",
}


class ConnectionCache:
    """Connections kept open after a delivery for the next message to the same host (as
    Postfix's smtp connection cache): at most `per_host` idle ones per host, each closed
    after `idle` seconds unused. `run` closes the stale ones; run it in a nursery."""

    def __init__(self, *, idle: float = 2.0, per_host: int = 4) -> None:
        self.idle = idle
        self.per_host = per_host
        self._idle: dict[tuple[object, ...], list[Opened]] = {}
        self.reused = 0  # deliveries that found a connection here (tests look)

    def take(self, key: tuple[object, ...]) -> Opened | None:
        now = trio.current_time()
        waiting = self._idle.get(key, [])
        while waiting:
            conn = waiting.pop()
            if now - conn.idle_since < self.idle:
                self.reused += 1
                return conn
            waiting.insert(0, conn)  # stale: left for run() to close
            break
        return None

    def put(self, key: tuple[object, ...], conn: Opened) -> bool:
        """Keep `conn`; False when it is not kept (idle = 0 keeps none, or the host has enough)."""
        if self.idle <= 0:
            return False
        waiting = self._idle.setdefault(key, [])
        if len(waiting) >= self.per_host:
            return False
        conn.idle_since = trio.current_time()
        waiting.append(conn)
        return True

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await trio.sleep(max(self.idle / 2, 0.1))
                now = trio.current_time()
                for key, waiting in list(self._idle.items()):
                    stale = [c for c in waiting if now - c.idle_since >= self.idle]
                    self._idle[key] = [c for c in waiting if c not in stale]
                    for conn in stale:
                        try:
                            await say_quit(conn.talk)
                        finally:
                            await trio.aclose_forcefully(conn.talk.stream)
                    if not self._idle[key]:
                        del self._idle[key]
        finally:
            # Shielded: a cancelled close of one TLS stream must not leave the others open.
            with trio.CancelScope(shield=True):
                for waiting in self._idle.values():
                    for conn in waiting:
                        await trio.aclose_forcefully(conn.talk.stream)
            self._idle.clear()


async def _tls(
    stream: trio.abc.Stream, host: str, timeout: float, policy: TlsPolicy, talk: Conversation
) -> trio.SSLStream[trio.abc.Stream]:
    """The TLS handshake, and the certificate checked as the security level asks: at verify
    and secure, a chain to a trusted CA and a name the level accepts, else Failed (the
    attempt is deferred, and nothing else is said to this server)."""
    sni = host if tlspolicy.ip_of(host) is None else None  # RFC 6066 3: no IP address as a server name (RFC 7672 8.1: DANE sends it)
    tls_stream = trio.SSLStream(stream, tlspolicy.context(policy.ca_file, policy.pkix or policy.audit), server_hostname=sni)
    with telemetry.span(telemetry.SPAN_TLS, attributes={"server.address": host}) as span:
        try:
            with trio.fail_after(timeout):
                await tls_stream.do_handshake()
        except (ssl.SSLCertVerificationError, trio.BrokenResourceError) as exc:
            telemetry.metrics.tls_handshake("outbound", False)
            cause = exc if isinstance(exc, ssl.SSLCertVerificationError) else exc.__cause__  # trio wraps what OpenSSL raised
            if not isinstance(cause, ssl.SSLCertVerificationError):
                talk.tls_result = "validation-failure"
                raise
            talk.tls_result = (
                "certificate-expired" if cause.verify_code == 10 else "certificate-not-trusted"
            )  # 10: X509_V_ERR_CERT_HAS_EXPIRED
            why = f"TLS: the certificate of {host} is not verified ({policy.said}): {cause.verify_message}"
            failed = Failed(why, stage="tls")
            failed.audited = talk.tls_result if policy.audit else ""
            raise failed from exc
        except BaseException:
            telemetry.metrics.tls_handshake("outbound", False)
            talk.tls_result = "validation-failure"
            raise
        if policy.level == "dane" and policy.tlsa:  # RFC 7672 3: the chain against the host's TLSA records
            mismatch = dane.check(dane.chain_of(tls_stream), policy.tlsa, policy.names(host))
            if mismatch:
                talk.tls_result = "tlsa-invalid"
                telemetry.metrics.tls_handshake("outbound", False)
                await trio.aclose_forcefully(tls_stream)
                records = "; ".join(str(r) for r in policy.tlsa)
                raise _after_handshake(
                    f"TLS: the certificate of {host} does not match its TLSA records ({policy.said}: {records}): {mismatch}"
                )
        elif policy.audit and not tlspolicy.matches(tls_stream.getpeercert() or {}, policy.names(host)):
            talk.tls_result = "certificate-host-mismatch"  # MTA-STS testing: reported, and the mail goes on
            telemetry.metrics.tls_handshake("outbound", True)
            return tls_stream
        elif policy.pkix and not tlspolicy.matches(tls_stream.getpeercert() or {}, policy.names(host)):
            talk.tls_result = "certificate-host-mismatch"
            telemetry.metrics.tls_handshake("outbound", False)
            await trio.aclose_forcefully(tls_stream)
            wanted = " or ".join(policy.names(host))
            raise _after_handshake(f"TLS: the certificate of {host} does not name {wanted} ({policy.said})")
        telemetry.metrics.tls_handshake("outbound", True)
        talk.tls_result = "success"
        if telemetry.enabled():
            span.set_attribute("tls.protocol.version", (tls_stream.version() or "").removeprefix("TLSv"))
            span.set_attribute("tls.cipher", (tls_stream.cipher() or ("",))[0])
    return tls_stream


def _after_handshake(why: str) -> Failed:
    """A connection refused once its TLS was up: journaled as encrypted, with the reason."""
    failed = Failed(why, stage="tls")
    failed.tls = True
    return failed


async def _hello(talk: Conversation, name: str, timeout: float) -> None:
    reply = await talk.say(talk.conn.ehlo(name), timeout)
    if reply.code // 100 == 2:
        return
    if reply.code == 421 or (await talk.say(talk.conn.helo(name), timeout)).code // 100 != 2:
        raise Failed(f"EHLO/HELO: {reply}", stage="hello", said=reply)


def _bound(settings: ClientSettings, host: str, address: str) -> Callable[[list[str]], Awaitable[None]] | None:
    hook = settings.before_data
    if hook is None:
        return None

    async def call(recipients: list[str]) -> None:
        await hook(recipients, host, address)

    return call


async def _transaction(
    talk: Conversation,
    message: OutboundMessage,
    timeout: dict[str, float],
    *,
    before_data: Callable[[list[str]], Awaitable[None]] | None = None,
) -> dict[str, Outcome]:
    conn = talk.conn
    capabilities = conn.capabilities
    recipients = message.recipients
    body = message.body
    if not capabilities.has("8BITMIME") and smtp.needs_8bit(body):
        body = downgrade.seven_bit(body) or body  # RFC 6152 3: converted, as Postfix does; or it fails below
    try:
        params = smtp.mail_params(
            capabilities, size=len(body), eight_bit=smtp.needs_8bit(body), smtputf8=message.smtputf8, requiretls=message.requiretls
        )
    except smtp.Unsupported as exc:
        return {r: Outcome("failed", str(exc), enhanced=exc.status, stage="mail") for r in recipients}
    if capabilities.has("PIPELINING"):  # MAIL, every RCPT and DATA in one write (RFC 2920)
        await talk.send(
            b"".join([conn.mail(message.reverse_path, params), *(conn.rcpt(r) for r in recipients), conn.data()]), timeout["command"]
        )
        replies = await talk.replies(len(recipients) + 2, timeout["command"])
        mail, rcpts = replies[0], replies[1:-1]
        data: Reply | None = replies[-1]
    else:
        mail = await talk.say(conn.mail(message.reverse_path, params), timeout["command"])
        if mail.code // 100 != 2:
            return _all(recipients, mail, "mail")
        rcpts = [await talk.say(conn.rcpt(r), timeout["command"]) for r in recipients]
        data = await talk.say(conn.data(), timeout["data_init"]) if any(r.code // 100 == 2 for r in rcpts) else None
    if mail.code // 100 != 2:
        return _all(recipients, mail, "mail")
    outcomes = {r: _outcome(reply, "rcpt") for r, reply in zip(recipients, rcpts, strict=True) if reply.code // 100 != 2}
    accepted = [r for r in recipients if r not in outcomes]
    if not accepted or data is None or data.code != 354:
        if data is not None and data.code == 354:  # pipelined DATA went through with no recipient: end it empty
            await talk.send(conn.message(b""), timeout["data_block"])
            await talk.replies(1, timeout["data_end"])
        else:
            await talk.say(conn.rset(), timeout["command"])
        return outcomes | ({r: _outcome(data, "data") for r in accepted} if data is not None else {})
    if before_data is not None:
        await before_data(accepted)
    try:
        await talk.send(conn.message(body), timeout["data_block"])
        final = (await talk.replies(1, timeout["data_end"]))[0]
    except Failed as exc:
        raise Failed(exc.text, final=True, stage="message") from exc  # it may have been delivered: do not send it again elsewhere
    return outcomes | {r: _outcome(final, "message") for r in accepted}


def _outcome(reply: Reply, stage: str) -> Outcome:
    status: Status = "delivered" if reply.code // 100 == 2 else "deferred" if reply.code // 100 == 4 else "failed"
    return Outcome(status, reply.text, reply.code, reply.enhanced or "", stage=stage)


def _all(recipients: Sequence[str], reply: Reply, stage: str) -> dict[str, Outcome]:
    return {r: _outcome(reply, stage) for r in recipients}


async def say_quit(talk: Conversation) -> None:
    if talk.conn.state in (smtp.State.CLOSED, smtp.State.TLS, smtp.State.BODY) or talk.conn.awaiting:
        return  # nothing to say politely
    with trio.move_on_after(5), contextlib.suppress(Failed, trio.BrokenResourceError, trio.ClosedResourceError, OSError, ProtocolError):
        await talk.say(talk.conn.quit(), 5)
