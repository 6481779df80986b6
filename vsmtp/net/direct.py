"""The session's plain TCP socket, read and written without trio's per-call scheduling.

trio's SocketStream makes every `send_all` and `receive_some` a full checkpoint: it checks
for cancellation, tries the call, and yields to the scheduler afterwards, whether or not the
call had to wait (about 6 us a call here, against 1 us for the system call). An SMTP
message is eight or nine such calls (MAIL, RCPT, DATA, the body, four replies), so a
session pays that overhead more than it pays for its own parsing.

A session on plain TCP asks these instead: `send_now` writes what the socket takes at once
and `receive_now` reads what has already arrived, both without yielding. Only when nothing
has arrived does the session wait (`receive`, within its deadline), and only a reply the
socket cannot take at once goes through the stream's `send_all`. The session yields once
before each read, so another session always runs between two reads of one (a client that
pipelines cannot hold the process). Once TLS starts the session uses the TLS stream, which
wraps the same socket, and these are no longer called.

Both work on the socket's file descriptor (os.read, os.write: no private trio attribute), so
the caller must not use them after closing the stream. `Wire` holds the session's stream
and uses them while it may: the session asks it, and never looks at the descriptor itself.
"""

from __future__ import annotations

import errno
import os

import trio


def fileno(stream: trio.abc.Stream) -> int | None:
    """The descriptor of a plain TCP stream, or None for anything else (TLS, a test's memory stream)."""
    if isinstance(stream, trio.SocketStream):
        return stream.socket.fileno()
    return None


def receive_now(fd: int, max_bytes: int) -> bytes | None:
    """What has arrived, up to `max_bytes` (b"" once the peer has closed), or None if nothing has."""
    try:
        return os.read(fd, max_bytes)
    except BlockingIOError:
        return None
    except OSError as exc:
        raise _broken(exc) from exc


async def receive(fd: int, max_bytes: int) -> bytes:
    """Wait until something arrives and read it (b"" once the peer has closed): cancellable."""
    while True:
        await trio.lowlevel.wait_readable(fd)
        data = receive_now(fd, max_bytes)
        if data is not None:
            return data


def send_now(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Write what the socket takes without waiting; how many octets that was (0 if none)."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise _broken(exc) from exc


class Wire:
    """A session's connection: its stream (plain TCP, then TLS after STARTTLS), read and
    written with the calls above while it is plain TCP."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._fd = fileno(stream)

    @property
    def direct(self) -> bool:
        """Whether what has arrived can be read without waiting (`receive_now`)."""
        return self._fd is not None

    def receive_now(self, max_bytes: int) -> bytes | None:
        """What has arrived (b"" once the peer has closed), or None if nothing has: only while `direct`."""
        assert self._fd is not None
        return receive_now(self._fd, max_bytes)

    async def receive(self, max_bytes: int) -> bytes | bytearray:
        """Wait until something arrives and read it (b"" once the peer has closed): cancellable."""
        return await (receive(self._fd, max_bytes) if self._fd is not None else self.stream.receive_some(max_bytes))

    async def send(self, out: bytearray) -> None:
        """Send `out` whole and empty it: at once when the socket takes it, else waiting for room."""
        if self._fd is not None:
            sent = send_now(self._fd, out)
            del out[:sent]
            if not out:
                return
        data = bytes(out)
        out.clear()
        await self.stream.send_all(data)

    def secure(self) -> None:
        """STARTTLS (or implicit TLS) begins: from here the socket carries TLS records, which
        only the TLS stream (set as `stream` once it is made) may read and write."""
        self._fd = None

    async def close(self) -> None:
        if self._fd is not None and isinstance(self.stream, trio.SocketStream):
            # Plain TCP: nothing to say before closing, so no cancelled checkpoint as
            # aclose_forcefully makes (raising and catching Cancelled, for each connection).
            self._fd = None
            self.stream.socket.close()
        else:
            await trio.aclose_forcefully(self.stream)  # TLS: its close_notify, if it can go at once
            if isinstance(self.stream, trio.SSLStream) and hasattr(self.stream, "_handshook"):
                # trio's SSLStream keeps its handshake as a bound method of itself: a reference
                # cycle, which with workers.settle_heap's thresholds outlives the connection
                # until a full collection, OpenSSL's buffers with it (30 MiB in a receiving
                # process after a few hundred STARTTLS sessions). Nothing handshakes a closed stream.
                self.stream._handshook = None  # type: ignore[assignment]


def _broken(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    # As trio's SocketStream: a closed descriptor is our own doing, the rest the peer's.
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket error: {exc}")
