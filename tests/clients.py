"""Raw SMTP clients for tests that must control every byte: what smtplib would hide (pipelined
batches, injected plaintext, a session left half-way) or could not do (stop between steps).

Both read the same way: a reply is the final line of a possibly multi-line answer ("250 2.0.0 Ok").
"""

from __future__ import annotations

import socket
import ssl

import trio


class ReplyBuffer:
    """Bytes from a server, cut into replies."""

    def __init__(self) -> None:
        self.data = b""

    def next_reply(self) -> str | None:
        """The next complete reply's final line, or None until more bytes arrive."""
        while b"\r\n" in self.data:
            line, self.data = self.data.split(b"\r\n", 1)
            if line[3:4] == b" ":
                return line.decode()
        return None


class BlockingClient:
    """A socket client for threads and plain (non-trio) tests; it can switch to TLS mid-stream."""

    def __init__(self, port: int, *, timeout: float = 10) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = ReplyBuffer()

    def replies(self, count: int = 1) -> list[str]:
        found: list[str] = []
        while len(found) < count:
            reply = self.buffer.next_reply()
            if reply is not None:
                found.append(reply)
                continue
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"connection closed after {found}")
            self.buffer.data += data
        return found

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def say(self, data: bytes, count: int = 1) -> list[str]:
        """Send `data` (one write, however many commands) and read `count` replies."""
        self.send(data)
        return self.replies(count)

    def start_tls(self, ctx: ssl.SSLContext, server_hostname: str = "mx.test") -> None:
        """Handshake now (after a 220 to STARTTLS, or on an implicit-TLS port)."""
        assert self.buffer.data == b"", "the server sent something after 220 in plaintext"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)

    def starttls(self, ctx: ssl.SSLContext, server_hostname: str = "mx.test") -> None:
        """After the greeting: EHLO, STARTTLS, and the handshake."""
        ready = self.say(b"EHLO c\r\nSTARTTLS\r\n", 2)[1]
        assert ready.startswith("220 "), ready
        self.start_tls(ctx, server_hostname)

    def read_until_closed(self) -> bytes:
        """What the server sends before it closes (b"" if it just closes or resets)."""
        try:
            return self.sock.recv(1024)
        except ConnectionResetError:
            return b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Peer:
    """A trio client from a chosen loopback source address (127.0.0.0/8 is all ours)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = ReplyBuffer()

    @classmethod
    async def connect(cls, port: int, source: str = "127.0.0.1") -> Peer:
        sock = trio.socket.socket()
        try:
            await sock.bind((source, 0))
            await sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return cls(trio.SocketStream(sock))

    async def replies(self, count: int, *, timeout: float = 10) -> list[str]:
        found: list[str] = []
        with trio.fail_after(timeout):
            while len(found) < count:
                reply = self.buffer.next_reply()
                if reply is not None:
                    found.append(reply)
                    continue
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(f"connection closed after {found}")
                self.buffer.data += data
        return found

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def closed(self, *, timeout: float = 10) -> bool:
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return True
                if not data:
                    return True
                self.buffer.data += data

    async def aclose(self) -> None:
        await self.stream.aclose()
