"""The mbox transport (RFC 4155): messages appended to one file, each after a "From " line.

- The "From " line carries the envelope sender (MAILER-DAEMON for the null sender) and the
  time in asctime form, UTC.
- Line ends are LF, as every mbox reader expects; a line of the message that starts with
  "From " (after any number of ">") gets one more ">" (the mboxrd convention), so that no
  line of a message can be taken for the start of the next.
- The file is locked with fcntl (lockf) while one message is appended, then fsynced. An
  append that fails half-way is cut back to the size the file had, so a full disk never
  leaves half a message behind.

Synchronous: run it in a worker thread.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

from ...queue import policy
from ..transport import Delivery
from .local import Body, FileTransport, Owner, acting_as

log = logging.getLogger(__name__)


class Mbox(FileTransport):
    kind = "mbox"
    what = "mbox"

    def write(self, delivery: Delivery, address: str, attempts: int, route: policy.LocalRoute, body: Body, owner: Owner | None) -> str:
        job = delivery.job
        path = Path(self.services.config.delivery.mbox.format(user=route.user, domain=route.domain))
        if owner is not None and not path.exists():
            _create_for(path, owner)
        with acting_as(owner):
            # Written before a crash or a lost journal record? Our Received header names the queue id.
            if (job.recovered or attempts) and has_delivery(path, address, job.queue_id):
                log.info("%s: %s was already delivered to %s before a restart", job.queue_id, address, path)
                return str(path)
            offset = deliver(path, job.reverse_path, [self.headers(delivery, address), *body()])  # escaped whole
        return f"{path} at offset {offset}"


_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


def _create_for(path: Path, owner: Owner) -> None:
    """An mbox spool is shared (var/mail) and its owner may not create files in it, so root
    creates the mailbox, empty, and gives it to its owner (as Postfix's local does when the
    spool is not world-writable); O_EXCL and O_NOFOLLOW: never through a planted link."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)  # the shared spool stays root's
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        os.fchown(fd, *owner)
    finally:
        os.close(fd)


def from_line(reverse_path: str, when: float) -> bytes:
    sender = reverse_path or "MAILER-DAEMON"
    return f"From {sender} {time.asctime(time.gmtime(when))}\n".encode()


def entry(reverse_path: str, when: float, parts: Sequence[bytes | memoryview]) -> bytes:
    """One message as the mbox stores it, blank separator line included."""
    message = b"".join(parts).replace(b"\r\n", b"\n")
    message = _FROM_LINE.sub(rb">\1", message)
    if not message.endswith(b"\n"):
        message += b"\n"
    return from_line(reverse_path, when) + message + b"\n"


def deliver(path: Path, reverse_path: str, parts: Sequence[bytes | memoryview], *, when: float | None = None) -> int:
    """Append one message to the mbox at `path` (created 0600 if missing); return the offset
    it starts at."""
    data = entry(reverse_path, time.time() if when is None else when, parts)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, start)  # no half message left behind
            raise
        return start
    finally:
        os.close(fd)  # closing releases the lock


def has_delivery(path: Path, recipient: str, queue_id: str) -> bool:
    """Whether the mbox already holds this queue id's copy for `recipient` (after a crash):
    our Delivered-To line, followed closely by our Received header with the queue id."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    pattern = re.escape(f"\nDelivered-To: {recipient}\nReceived: ".encode()) + rb"[^\x00]{0,400}? id " + re.escape(queue_id.encode())
    return re.search(pattern, data) is not None
