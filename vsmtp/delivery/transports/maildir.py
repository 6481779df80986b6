"""The maildir transport: one file per recipient, written to tmp/, fsynced, renamed into new/.

File names follow the Maildir convention "time.unique.host" with a unique part derived from
the queue id and the recipient, so that a delivery interrupted between the rename and the
journal commit is recognised on the next attempt instead of written twice. Synchronous: run
it in worker threads.

The rename into new/ must reach the disk before the delivery is journaled, which takes an
fsync of the directory. Deliveries running at the same time into the same Maildir share one:
DirectorySync lets the first thread sync for everyone whose rename came before it started,
so under load a busy mailbox costs one directory fsync per round, not one per message.

With delivery.maildir_sync = "filesystem" a batch's files are not fsynced one by one: once
all are written to tmp/, one syncfs(2) per filesystem makes them durable, and only then are
they renamed into new/ (as their owner) and the directories synced. A file is never in new/
before its content is on the disk, so the recovery after a crash, which takes a file found
in new/ as delivered, never takes a half-written one.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ...queue import policy
from ..transport import Delivery
from .local import Body, FileTransport, Owner, acting_as, libc, make_parents

log = logging.getLogger(__name__)


class Maildir(FileTransport):
    kind = "maildir"
    what = "Maildir"

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return batch(by_filesystem=self.services.config.delivery.maildir_sync == "filesystem")

    def write(self, delivery: Delivery, address: str, attempts: int, route: policy.LocalRoute, body: Body, owner: Owner | None) -> str:
        job, config = delivery.job, self.services.config
        path = Path(config.delivery.maildir.format(user=route.user, domain=route.domain))
        name = file_name(accepted_at=job.accepted_at, queue_id=job.queue_id, recipient=address, hostname=config.hostname)
        if owner is not None and path not in _ensured:
            make_parents(path, owner)
        with acting_as(owner):
            # Written before? Only possible if a crash (recovered) or a journal failure (a
            # retry) came between the rename and the journal commit; a first attempt skips it.
            existing = find(path, name, look_in_cur=job.recovered) if job.recovered or attempts else None
            if existing is not None:
                log.info("%s: %s was already delivered to %s before a restart", job.queue_id, address, existing)
                return str(existing)
            return str(deliver(path, name, itertools.chain([self.headers(delivery, address)], body()), owner=owner))


def file_name(*, accepted_at: float, queue_id: str, recipient: str, hostname: str) -> str:
    digest = hashlib.sha256(recipient.encode("utf-8")).hexdigest()[:12]
    host = hostname.replace("/", "\\057").replace(":", "\\072")  # as the convention asks
    return f"{int(accepted_at)}.V{queue_id}R{digest}.{host}"


_ensured: set[Path] = set()  # Maildirs known to exist: no three mkdir calls per message


def ensure(maildir: Path) -> None:
    if maildir in _ensured:
        return
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    _ensured.add(maildir)


def find(maildir: Path, name: str, *, look_in_cur: bool) -> Path | None:
    """The delivered file called `name`, in new/ or (after a reader saw it) in cur/ as name:2,..."""
    candidate = maildir / "new" / name
    if candidate.exists():
        return candidate
    if look_in_cur and (maildir / "cur").is_dir():
        with os.scandir(maildir / "cur") as entries:
            for entry in entries:
                if entry.name == name or entry.name.startswith(name + ":"):
                    return Path(entry.path)
    return None


GROUP = 1 << 20  # octets gathered into one writev


def _write_all(fd: int, parts: Iterable[bytes | memoryview]) -> None:
    """Write every part, in as few calls as the kernel allows (writev: no joined copy). The
    parts may come one at a time (a large body read chunk by chunk): no more than about
    GROUP octets of them are held at once."""
    group: list[memoryview] = []
    held = 0
    for part in parts:
        if part:
            group.append(memoryview(part))
            held += len(part)
        if held >= GROUP:
            _writev(fd, group)
            group, held = [], 0
    _writev(fd, group)


def _writev(fd: int, views: list[memoryview]) -> None:
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def deliver(maildir: Path, name: str, parts: Iterable[bytes | memoryview], *, owner: Owner | None = None) -> Path:
    """Write parts as one message file and make it visible atomically; return its path.
    Whatever goes wrong while it is written (a full disk, a body that fails its checksum
    halfway) leaves nothing in tmp/ and is raised. In a batch that syncs by filesystem the
    file stays in tmp/ until the batch ends (batch()): `owner` renames it then."""
    pending: _Pending | None = getattr(_batch, "pending", None)
    later = pending if pending is not None and pending.by_filesystem else None  # the batch renames it
    ensure(maildir)
    tmp = maildir / "tmp" / name
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileNotFoundError:  # removed since we made it: make it again
        _ensured.discard(maildir)
        ensure(maildir)
        fd = os.open(tmp, flags, 0o600)
    try:
        _write_all(fd, parts)
        if later is None:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk leaves no half-written file in tmp/
        raise
    os.close(fd)
    final = maildir / "new" / name
    if later is not None:
        later.renames.append((tmp, final, owner))  # into new/ once the batch's data is on the disk
        return final
    _rename(tmp, final)
    if pending is not None:
        pending.directories.add(maildir / "new")  # synced once when the batch ends
    else:
        directories.sync(maildir / "new")  # the rename itself must survive a crash
    return final


def _rename(tmp: Path, final: Path) -> None:
    try:
        os.rename(tmp, final)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(slots=True)
class _Pending:
    """What a batch (in one thread) leaves for its end."""

    by_filesystem: bool  # delivery.maildir_sync = "filesystem", and this system has syncfs
    directories: set[Path] = field(default_factory=set)  # new/ directories to fsync
    renames: list[tuple[Path, Path, Owner | None]] = field(default_factory=list)  # tmp -> new, as whom


_batch = threading.local()


@contextmanager
def batch(*, by_filesystem: bool = False) -> Iterator[None]:
    """Deliveries in this block (in this thread) sync each directory once, when it ends;
    `by_filesystem`: their files are synced at its end too, by filesystem, then renamed.
    Nothing delivered inside may be reported as delivered before the block has exited."""
    pending = _Pending(by_filesystem=by_filesystem and _syncfs is not None)
    _batch.pending = pending
    try:
        yield
    finally:
        _batch.pending = None
    if pending.renames:
        try:
            _settle(pending)
        except BaseException:
            for tmp, _, owner in pending.renames:  # nothing half-done left in tmp/ (a renamed one is gone already)
                with acting_as(owner), contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
    for directory in pending.directories:
        directories.sync(directory)


def _settle(pending: _Pending) -> None:
    """The batch's files onto the disk (one syncfs per filesystem), then into new/: each
    renamed as its owner, as it was written (a symbolic link planted in a Maildir leads
    nowhere its owner could not write)."""
    devices: dict[int, Path] = {}
    for tmp_directory in {tmp.parent for tmp, _, _ in pending.renames}:
        devices.setdefault(os.stat(tmp_directory).st_dev, tmp_directory)
    for directory in devices.values():
        sync_filesystem(directory)
    for tmp, final, owner in pending.renames:
        with acting_as(owner):
            _rename(tmp, final)
        pending.directories.add(final.parent)


_syncfs = getattr(libc, "syncfs", None) if libc is not None else None  # Linux's syncfs(2), through ctypes (the GIL released)


def sync_filesystem(directory: Path) -> None:
    """Everything written to the filesystem that holds `directory` onto the disk: its data,
    its metadata and the disk's write cache (syncfs(2); a write-back error since the last
    call is reported, Linux 5.8 and later)."""
    assert _syncfs is not None
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs: {os.strerror(code)}", str(directory))
    finally:
        os.close(fd)


@dataclass(slots=True)
class _Directory:
    lock: threading.Condition = field(default_factory=threading.Condition)
    requested: int = 0  # renames announced so far
    synced: int = 0  # renames an fsync has covered
    syncing: bool = False
    failed: tuple[int, OSError] | None = None  # (covering up to, error) of the last failed round


class DirectorySync:
    """One directory fsync for every rename that came before it (group commit for directories)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._directories: dict[Path, _Directory] = {}
        self.fsyncs = 0  # how many were made (tests check that they are shared)

    def sync(self, path: Path) -> None:
        """Return once an fsync of `path` that began after this call has completed."""
        with self._lock:
            state = self._directories.setdefault(path, _Directory())
        with state.lock:
            state.requested += 1
            mine = state.requested
            while state.synced < mine:
                if state.failed is not None and state.failed[0] >= mine:
                    raise state.failed[1]
                if state.syncing:
                    state.lock.wait()
                    continue
                state.syncing, covering = True, state.requested
                error = None
                state.lock.release()
                try:
                    _fsync_dir(path)
                    self.fsyncs += 1
                except OSError as exc:
                    error = exc
                finally:
                    state.lock.acquire()
                    state.syncing = False
                    if error is None:
                        state.synced = covering
                    else:
                        state.failed = (covering, error)
                    state.lock.notify_all()
                if error is not None:
                    raise error


directories = DirectorySync()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
