"""A small receiving SMTP server for delivery tests: real sockets, scripted answers.

It speaks enough ESMTP for a client (EHLO with PIPELINING, SIZE, 8BITMIME, STARTTLS when
given a certificate), keeps every message it accepts, and answers RCPT or the end of data
with a scripted reply when a test asks for one (for 4xx and 5xx cases).
"""

from __future__ import annotations

import base64
import ssl
from collections import deque
from dataclasses import dataclass, field

import trio


@dataclass
class Received:
    reverse_path: str
    recipients: list[str]
    data: bytes
    tls: bool
    user: str = ""  # who authenticated, if anyone


@dataclass
class Sink:
    host: str
    port: int = 0
    name: str = "sink.test"
    tls: ssl.SSLContext | None = None
    rcpt_replies: deque[bytes] = field(default_factory=deque)  # used first, then 250
    data_replies: deque[bytes] = field(default_factory=deque)
    greeting: bytes = b"220 sink.test ESMTP\r\n"
    received: list[Received] = field(default_factory=list)
    sessions: int = 0
    active: int = 0  # sessions open now ...
    most_active: int = 0  # ... and the most at once
    delay: float = 0.0  # seconds before each reply: a slow server
    auth: tuple[str, str] | None = None  # AUTH PLAIN required (offered after STARTTLS only)
    data_delay: float = 0.0  # seconds between taking a message and saying so (its 250)
    auth_attempts: int = 0  # AUTH commands received (credentials that reached this server)
    requiretls: bool = False  # offer REQUIRETLS (RFC 8689) once TLS is on
    mail_commands: list[bytes] = field(default_factory=list)  # every MAIL command, whole

    def __post_init__(self) -> None:
        self.rcpt_replies, self.data_replies = deque(self.rcpt_replies), deque(self.data_replies)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._session, listeners)

    async def _session(self, stream: trio.abc.Stream) -> None:
        self.sessions += 1
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        tls = False
        user = ""
        buffer = b""
        mail, rcpts, accepted = "", [], []

        async def reply(line: bytes) -> None:
            if self.delay:
                await trio.sleep(self.delay)
            await stream.send_all(line)

        async def line() -> bytes | None:
            nonlocal buffer
            while b"\r\n" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    return None
                buffer += data
            first, buffer = buffer.split(b"\r\n", 1)
            return first

        try:
            await reply(self.greeting)
            if not self.greeting.startswith(b"2"):
                return
            while (command := await line()) is not None:
                verb = command[:4].upper()
                if verb == b"EHLO":
                    extensions = [b"PIPELINING", b"SIZE 10000000", b"8BITMIME"] + ([b"STARTTLS"] if self.tls and not tls else [])
                    extensions += [b"AUTH PLAIN"] if self.auth and tls else []
                    extensions += [b"REQUIRETLS"] if self.requiretls and tls else []
                    lines = [self.name.encode(), *extensions]
                    await reply(b"".join(b"250-" + x + b"\r\n" for x in lines[:-1]) + b"250 " + lines[-1] + b"\r\n")
                elif verb == b"HELO":
                    await reply(b"250 " + self.name.encode() + b"\r\n")
                elif verb == b"STAR" and self.tls is not None:
                    await reply(b"220 2.0.0 go ahead\r\n")
                    stream = trio.SSLStream(stream, self.tls, server_side=True)
                    await stream.do_handshake()
                    tls, buffer = True, b""
                elif verb == b"AUTH":
                    self.auth_attempts += 1
                    token = command.split()[-1]
                    try:
                        _, name, password = base64.b64decode(token).split(b"\0")
                    except ValueError:
                        name = password = b""
                    if self.auth is not None and tls and (name.decode(), password.decode()) == self.auth:
                        user = name.decode()
                        await reply(b"235 2.7.0 authenticated\r\n")
                    else:
                        await reply(b"535 5.7.8 authentication failed\r\n")
                elif verb == b"MAIL" and self.auth is not None and not user:
                    await reply(b"530 5.7.0 authentication required\r\n")
                elif verb == b"MAIL":
                    self.mail_commands.append(command)
                    mail, rcpts, accepted = command.split(b"<", 1)[1].split(b">", 1)[0].decode(), [], []
                    await reply(b"250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    address = command.split(b"<", 1)[1].split(b">", 1)[0].decode()
                    answer = self.rcpt_replies.popleft() if self.rcpt_replies else b"250 2.1.5 ok\r\n"
                    rcpts.append(address)
                    if answer.startswith(b"2"):
                        accepted.append(address)
                    await reply(answer)
                elif verb == b"DATA":
                    if not accepted:
                        await reply(b"554 5.5.1 no valid recipients\r\n")
                        continue
                    await reply(b"354 go ahead\r\n")
                    while b"\r\n.\r\n" not in b"\r\n" + buffer:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        buffer += data
                    raw, buffer = (b"\r\n" + buffer).split(b"\r\n.\r\n", 1)
                    body = raw[2:].replace(b"\r\n..", b"\r\n.") + b"\r\n"
                    if body.startswith(b".."):
                        body = body[1:]
                    answer = self.data_replies.popleft() if self.data_replies else b"250 2.0.0 ok: queued\r\n"
                    if answer.startswith(b"2"):
                        self.received.append(Received(mail, accepted, body, tls, user))
                    await trio.sleep(self.data_delay)
                    await reply(answer)
                elif verb == b"RSET":
                    mail, rcpts, accepted = "", [], []
                    await reply(b"250 2.0.0 ok\r\n")
                elif verb == b"QUIT":
                    await reply(b"221 2.0.0 bye\r\n")
                    return
                else:
                    await reply(b"502 5.5.2 not here\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)
