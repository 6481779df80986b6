"""Wake a follower in another process when records are committed.

Processes sharing one journal each have their own writer. A process that follows the journal
(the queue projection, in the delivery process) would otherwise only see the others' records
when it polls. The writers ring a doorbell, a pipe whose write end they inherit, after each
commit; the follower listens on the read end and wakes its waiters. A byte carries no data:
the journal is the truth, the pipe only says "look now". A full pipe already says that, so a
ring never blocks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import trio


def ring(fd: int) -> None:
    """Say "committed" on the pipe `fd` (non-blocking; nothing is lost if the pipe is full)."""
    # Full: the follower has plenty to wake for already. Broken: nobody listens any more.
    with contextlib.suppress(BlockingIOError, BrokenPipeError):
        os.write(fd, b".")


async def listen(fd: int, on_ring: Callable[[], None]) -> None:
    """Call `on_ring` at each ring (e.g. GroupCommitWriter.notice_commits); return when every
    write end is closed. A pipe nobody writes to but whose closing matters (a lifeline) is
    listened to the same way."""
    os.set_blocking(fd, False)
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            if not os.read(fd, 65536):
                return
        except BlockingIOError:
            continue
        on_ring()
