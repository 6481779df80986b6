"""What the two file transports (maildir.py, mbox.py) share: a batch of deliveries written in
one worker thread, and mailbox ownership.

Run as root, vsmtp writes a mailbox as its owner (delivery.mailbox_owner): the thread that
writes takes the owner's file-system identity (setfsuid and setfsgid, which Linux keeps per
thread), so the kernel checks every path as the owner's and every file it creates is the
owner's, mode 0600: a symbolic link a user plants in their own Maildir leads nowhere they could
not write themselves. Directories missing above the mailbox are made by root and given to
the owner. Elsewhere (not Linux, or not root) mailboxes belong to vsmtp's own user.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import pwd
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import trio
from vsmtp_journal import CorruptBlob

from ... import telemetry
from ...config import Config
from ...queue import policy
from ..transport import MISSING, Delivery, Outcome, Result, Services, body_reader, traced

log = logging.getLogger(__name__)

Owner = tuple[int, int]  # uid, gid
Body = Callable[[], Iterable[bytes | memoryview]]


class OwnerUnknown(Exception):
    """The configured mailbox owner is not a user of this system."""


def owner_of(route: policy.LocalRoute, config: Config) -> Owner | None:
    """Who owns the mailbox of `route`, when vsmtp can write as someone else (root); None:
    vsmtp's own user."""
    wanted = config.delivery.mailbox_owner
    if not wanted or os.geteuid() != 0 or libc is None:
        return None
    if wanted == "system":
        return system_user(route.user)  # None: not a system user, a virtual mailbox, vsmtp's own
    uid, colon, gid = wanted.partition(":")
    if colon and uid.isdigit() and gid.isdigit():
        return int(uid), int(gid)
    found = system_user(wanted)
    if found is None:
        raise OwnerUnknown(f"delivery.mailbox_owner {wanted!r} is not a user of this system")
    return found


USERS_TTL = 60.0  # seconds a user lookup is remembered (getpwnam reads the passwd file: ~0.1 ms)
_users: dict[str, tuple[float, Owner | None]] = {}


def system_user(name: str) -> Owner | None:
    """The uid and gid of the system user `name` (None: no such user), looked up at most
    once a minute per name."""
    now = time.monotonic()
    known = _users.get(name)
    if known is not None and now - known[0] < USERS_TTL:
        return known[1]
    try:
        entry = pwd.getpwnam(name)
        found: Owner | None = (entry.pw_uid, entry.pw_gid)
    except KeyError:
        found = None
    if len(_users) >= 4096:
        _users.clear()
    _users[name] = (now, found)
    return found


libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if os.name == "posix" and hasattr(os, "setresuid") else None


@contextlib.contextmanager
def acting_as(owner: Owner | None) -> Iterator[None]:
    """This thread's file-system identity is `owner`'s inside the block (Linux's setfsuid is
    per thread: the other threads, and the event loop, stay root)."""
    if owner is None or libc is None:
        yield
        return
    uid, gid = owner
    libc.setfsgid(gid)
    libc.setfsuid(uid)
    try:
        if libc.setfsuid(-1) != uid:  # setfsuid reports no error: ask what is in force
            raise PermissionError(f"cannot take uid {uid} to write the mailbox")
        yield
    finally:
        libc.setfsuid(0)
        libc.setfsgid(0)


def make_parents(path: Path, owner: Owner | None) -> None:
    """Make the directories missing above and at `path` (mode 0700), as root, each given to
    `owner`: the owner may not be allowed to make them in the spool itself."""
    missing = []
    for directory in (path, *path.parents):
        if directory.exists():
            break
        missing.append(directory)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
            if owner is not None:
                os.chown(directory, *owner, follow_symlinks=False)


class FileTransport:
    """Delivery into local files, a batch in one worker thread. A subclass writes one
    recipient's copy (`write`) and may sync what the batch wrote at its end (`batch`)."""

    kind: ClassVar[str]
    concurrent = False
    max_recipients = 0
    what: ClassVar[str]  # the mailbox, as a reason names it: "Maildir", "mbox"

    def __init__(self, services: Services) -> None:
        self.services = services

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Result]:
        if not telemetry.enabled():
            return await trio.to_thread.run_sync(self.deliver_batch, deliveries)
        times: list[int] = []
        results = await trio.to_thread.run_sync(self.deliver_batch, deliveries, times)
        traced_batch(deliveries, results, times)
        return results

    def deliver_batch(self, deliveries: Sequence[Delivery], times: list[int] | None = None) -> list[Result]:
        """Write a batch (in a worker thread); with `times`, the moment each delivery began
        and the moment the last one ended are added to it (their spans')."""
        results = []
        try:
            with self.batch():
                for delivery in deliveries:
                    if times is not None:
                        times.append(time.time_ns())
                    results.append(self._write_all(delivery))
                if times is not None:
                    times.append(time.time_ns())
        except OSError as exc:  # what the batch wrote could not be synced: none of it is sure
            log.warning("cannot sync the %s directories: %s", self.what, exc)
            text = f"cannot write to the {self.what}: {exc}"
            results = [
                Result([o if o.status != "delivered" else _deferred(o.recipient, text) for o in r.outcomes], r.facts, r.corrupt)
                for r in results
            ]
        return results

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """What the deliveries of one batch share (maildir.py: one sync per directory)."""
        return contextlib.nullcontext()

    def _write_all(self, delivery: Delivery) -> Result:
        route = delivery.route
        assert isinstance(route, policy.LocalRoute)
        try:
            body = body_reader(self.services.journal, delivery.job)
            if body is None:
                return Result.all(delivery, "failed", MISSING, enhanced="5.3.0", stage="mailbox")
            owner = owner_of(route, self.services.config)
            outcomes = []
            for address, attempts in delivery.recipients:
                try:
                    detail = self.write(delivery, address, attempts, route, body, owner)
                except OSError as exc:
                    log.warning("%s: %s: cannot write to the %s: %s", delivery.job.queue_id, address, self.what, exc)
                    outcomes.append(_deferred(address, f"cannot write to the {self.what}: {exc}", full=exc.errno in _FULL))
                    continue
                outcomes.append(Outcome(recipient=address, status="delivered", text="delivered", stage="mailbox", detail=detail))
            return Result(outcomes)
        except CorruptBlob as exc:  # never delivered altered: held for the operator
            return Result([], corrupt=exc.reason)
        except OwnerUnknown as exc:
            return Result([_deferred(a, str(exc)) for a, _ in delivery.recipients])

    def write(self, delivery: Delivery, address: str, attempts: int, route: policy.LocalRoute, body: Body, owner: Owner | None) -> str:
        """Deliver one recipient's copy; where it went. OSError defers it."""
        raise NotImplementedError

    def headers(self, delivery: Delivery, address: str) -> bytes:
        """RFC 5321 4.4: the final delivery adds Return-Path; Delivered-To marks the mailbox."""
        return f"Return-Path: <{delivery.job.reverse_path}>\r\nDelivered-To: {address}\r\n".encode()


_FULL = (errno.ENOSPC, errno.EDQUOT)


def traced_batch(deliveries: Sequence[Delivery], results: Sequence[Result], times: Sequence[int]) -> None:
    """The `local.delivery` span of each delivery of a batch, made once the batch is written
    and synced, from the times the worker noted: a delivery that the batch's sync undid is
    shown deferred, not delivered. Made on the event loop's thread, after the worker is done."""
    for n, (delivery, result) in enumerate(zip(deliveries, results, strict=False)):
        if n + 1 >= len(times):
            break  # the batch stopped before this delivery was timed (its results say what it became)
        job = delivery.job
        attributes = {"vsmtp.recipients": len(delivery.recipients)}
        with traced(
            telemetry.SPAN_LOCAL, job.queue_id, job.traceparent, job.trace_continued, start_time=times[n], current=False, **attributes
        ) as span:
            statuses: set[str] = {o.status for o in result.outcomes} or {"held"}
            telemetry.spans.outcome(span, statuses, next((o.reason for o in result.outcomes if o.status != "delivered"), result.corrupt))
            span.end(times[n + 1])  # the block's own end comes after: a span ends once


def _deferred(address: str, text: str, *, full: bool = False) -> Outcome:
    # RFC 3463: 4.2.2 mailbox full (a full disk, a quota), else 4.3.0 other mail system status.
    return Outcome(recipient=address, status="deferred", text=text, enhanced="4.2.2" if full else "4.3.0", stage="mailbox")
