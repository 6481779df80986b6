"""The pregreet test of Postfix's postscreen, on listeners with `screen = true`: the server
sends the first line of a multi-line greeting (220-) and waits `screen.pregreet` seconds
before the last one; a client that talks meanwhile did not wait for its turn (RFC 5321
4.3.1), as spam engines that fire their commands at once do, and is closed with 521."""

from __future__ import annotations

import trio

from ..smtp.replies import Reply

TALKED_TOO_EARLY = Reply.of(521, "5.5.1", "Protocol error: you talked before the greeting")


async def talked_too_early(stream: trio.abc.Stream, hostname: str, seconds: float) -> bool:
    """Send "220-hostname" and wait; whether the client sent anything (or hung up) meanwhile."""
    await stream.send_all(f"220-{hostname}\r\n".encode())
    with trio.move_on_after(seconds):
        await stream.receive_some(512)  # what it said is not answered: it is refused
        return True
    return False
