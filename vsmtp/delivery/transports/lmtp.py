"""The lmtp transport: hand local mail to an LMTP server (RFC 2033), Dovecot's or Cyrus's,
over TCP or a unix socket. One transaction per message for all its recipients at that
server; after the data the server answers for each recipient, so one over quota (452, 552)
or unknown (550) is deferred or failed alone while the others are delivered. Connections
are kept for the next message (outbound.ConnectionCache), at most `delivery.lmtp_per_server`
deliveries at once to one server."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ...net import outbound
from ...queue import policy
from ...smtp import client as smtp
from ...smtp.errors import ProtocolError
from ...smtp.lmtp import LmtpConnection
from ...smtp.replies import Reply
from ..transport import Delivery, Outcome, Result, Services, Status, whole_body

TIMEOUT = {"connect": 30.0, "command": 300.0, "data_end": 600.0}  # Postfix's lmtp_*_timeout


class Lmtp:
    kind = "lmtp"
    concurrent = True
    max_recipients = 50  # Postfix's lmtp_destination_recipient_limit

    def __init__(self, services: Services) -> None:
        self.services = services
        self.limits: dict[str, trio.CapacityLimiter] = {}

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Result]:
        return [await self._one(d) for d in deliveries]

    async def _one(self, delivery: Delivery) -> Result:
        route = delivery.route
        assert isinstance(route, policy.LmtpRoute)
        body = await whole_body(self.services.journal, delivery)
        if isinstance(body, Result):
            return body
        limit = self.limits.setdefault(route.name, trio.CapacityLimiter(self.services.config.delivery.lmtp_per_server))
        async with limit:
            cache, key = self.services.connections, ("lmtp", route.name)
            conn = await self._reused(cache.take(key))
            try:
                if conn is None:
                    conn = await self._open(route)
                outcomes = await self._transaction(conn.talk, delivery, body, route)
            except outbound.Failed as exc:
                return Result.all(delivery, "deferred", exc.text, stage=exc.stage or "message", host=route.name)
            except (*outbound.LOST, ProtocolError) as exc:
                text = f"connection lost: {exc}"
                return Result.all(delivery, "deferred", text, stage="message", host=route.name)
            finally:
                if conn is not None and not (
                    conn.talk.conn.state is smtp.State.READY and not conn.talk.conn.awaiting and cache.put(key, conn)
                ):
                    await trio.aclose_forcefully(conn.talk.stream)
            return Result(outcomes)

    async def _reused(self, conn: outbound.Opened | None) -> outbound.Opened | None:
        """A kept connection, if it still answers RSET (RFC 5321 4.1.1.5)."""
        if conn is None:
            return None
        try:
            if (await conn.talk.say(conn.talk.conn.rset(), TIMEOUT["command"])).code == 250:
                return conn
        except (outbound.Failed, ProtocolError, *outbound.LOST):
            pass
        await trio.aclose_forcefully(conn.talk.stream)
        return None

    async def _open(self, route: policy.LmtpRoute) -> outbound.Opened:
        try:
            with trio.fail_after(TIMEOUT["connect"]):
                stream: trio.abc.Stream = await (
                    trio.open_unix_socket(route.path) if route.path else trio.open_tcp_stream(route.host, route.port)
                )
        except (OSError, trio.TooSlowError) as exc:
            raise outbound.Failed(f"cannot connect: {exc}", stage="connect") from exc
        talk = outbound.Conversation(stream, LmtpConnection())
        try:
            greeting = (await talk.replies(1, TIMEOUT["command"]))[0]
            if greeting.code // 100 != 2:
                raise outbound.Failed(f"greeting: {greeting}", stage="greeting", said=greeting)
            assert isinstance(talk.conn, LmtpConnection)
            reply = await talk.say(talk.conn.lhlo(self.services.config.hostname), TIMEOUT["command"])
            if reply.code // 100 != 2:
                raise outbound.Failed(f"LHLO: {reply}", stage="hello", said=reply)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return outbound.Opened(talk)

    async def _transaction(self, talk: outbound.Conversation, delivery: Delivery, body: bytes, route: policy.LmtpRoute) -> list[Outcome]:
        conn, job = talk.conn, delivery.job
        recipients = [a for a, _ in delivery.recipients]
        where = (route.name, "")  # the server's name ([HOST]:PORT, unix:PATH) says its address
        smtputf8 = not (job.reverse_path.isascii() and all(r.isascii() for r in recipients))
        try:
            params = smtp.mail_params(conn.capabilities, size=len(body), eight_bit=smtp.needs_8bit(body), smtputf8=smtputf8)
        except smtp.Unsupported as exc:
            return [
                Outcome(recipient=r, status="failed", text=str(exc), enhanced=exc.status, stage="mail", host=where[0], address=where[1])
                for r in recipients
            ]
        commands = [conn.mail(job.reverse_path, params), *(conn.rcpt(r) for r in recipients)]
        if conn.capabilities.has("PIPELINING"):  # RFC 2920, as Dovecot offers it
            await talk.send(b"".join([*commands, conn.data()]), TIMEOUT["command"])
            replies = await talk.replies(len(recipients) + 2, TIMEOUT["command"])
        else:
            replies = [await talk.say(command, TIMEOUT["command"]) for command in commands]
            if replies[0].code // 100 == 2 and any(r.code // 100 == 2 for r in replies[1:]):
                replies.append(await talk.say(conn.data(), TIMEOUT["command"]))
        mail, rcpts, data = replies[0], replies[1 : len(recipients) + 1], replies[len(recipients) + 1 :]
        if mail.code // 100 != 2:
            return [_outcome(r, mail, "mail", where) for r in recipients]  # a 354 after it: the connection is closed, not kept
        refused = {r: _outcome(r, reply, "rcpt", where) for r, reply in zip(recipients, rcpts, strict=True) if reply.code // 100 != 2}
        accepted = [r for r in recipients if r not in refused]
        if not accepted or not data or data[0].code != 354:
            said = {r: _outcome(r, data[0], "data", where) for r in accepted} if data else {}
            return [refused.get(r) or said[r] for r in recipients]
        await self.services.started(job.queue_id, accepted, route.name, route.path or route.host)  # the data may be taken unheard
        await talk.send(conn.message(body), TIMEOUT["command"])
        finals: dict[str, Outcome] = {}
        try:
            for recipient in accepted:  # RFC 2033 4.2: one reply each, in RCPT order
                [reply] = await talk.replies(1, TIMEOUT["data_end"])
                finals[recipient] = _outcome(recipient, reply, "message", where)
        except (outbound.Failed, ProtocolError, *outbound.LOST) as exc:  # those answered keep their answer
            text = f"no answer after the data: {exc}"
            for recipient in accepted:
                finals.setdefault(
                    recipient, Outcome(recipient=recipient, status="deferred", text=text, stage="message", host=where[0], address=where[1])
                )
        return [refused.get(r) or finals[r] for r in recipients]


def _outcome(recipient: str, reply: Reply, stage: str, where: tuple[str, str]) -> Outcome:
    status: Status = "delivered" if reply.code // 100 == 2 else "deferred" if reply.code // 100 == 4 else "failed"
    host, address = where
    return Outcome(
        recipient=recipient,
        status=status,
        text=reply.text,
        code=reply.code,
        enhanced=reply.enhanced or "",
        stage=stage,
        host=host,
        address=address,
    )
