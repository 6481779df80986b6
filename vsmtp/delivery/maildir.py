"""The Maildir transport: one file per recipient, written to tmp/, fsynced, renamed into new/.

File names follow the Maildir convention "time.unique.host" with a unique part derived from
the queue id and the recipient, so that a delivery interrupted between the rename and the
journal commit is recognised on the next attempt instead of written twice. Synchronous: run
it in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_name(*, accepted_at: float, queue_id: str, recipient: str, hostname: str) -> str:
    digest = hashlib.sha256(recipient.encode("utf-8")).hexdigest()[:12]
    host = hostname.replace("/", "\\057").replace(":", "\\072")  # as the convention asks
    return f"{int(accepted_at)}.V{queue_id}R{digest}.{host}"


def ensure(maildir: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)


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


def deliver(maildir: Path, name: str, parts: list[bytes]) -> Path:
    """Write parts as one message file and make it visible atomically; return its path."""
    ensure(maildir)
    tmp = maildir / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    final = maildir / "new" / name
    os.rename(tmp, final)
    _fsync_dir(maildir / "new")  # the rename itself must survive a crash
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
