"""Who may log in with AUTH: a password file of `user:hash` lines, hashed with scrypt.

    # comments and blank lines are ignored
    alice@example.org:$scrypt$ln=14,r=8,p=1$<salt>$<hash>

`vsmtp auth hash` prints a line to add. Only hashes are stored (hashlib's scrypt: no
dependency, memory-hard, RFC 7914); a password is never written or logged. The file is
looked at again (a stat) at most once a second when someone logs in, so edits take effect
without a reload; an edit that breaks the file keeps the users read before and says where
it is broken.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

SCHEME = "scrypt"
LOG2_N, R, P = 14, 8, 1  # RFC 7914's interactive-login cost: 16 MiB and tens of milliseconds
_HASH = re.compile(r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)\Z")
USER_NAME = re.compile(r"[^\s:#]{1,255}\Z")


@dataclass(frozen=True, slots=True)
class _Hash:
    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> _Hash:
        found = _HASH.match(text)
        if found is None:
            raise ValueError("expected $scrypt$ln=N,r=R,p=P$SALT$HASH (from `vsmtp auth hash`)")
        log2_n, r, p = (int(found.group(i)) for i in (1, 2, 3))
        if not (10 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            raise ValueError(f"scrypt cost ln={log2_n},r={r},p={p} out of range (ln 10-20, r 1-32, p 1-16)")
        return cls(log2_n, r, p, _unb64(found.group(4)), _unb64(found.group(5)))

    def matches(self, password: str) -> bool:
        return hmac.compare_digest(self._derive(password), self.digest)

    def _derive(self, password: str) -> bytes:
        n = 1 << self.log2_n
        return hashlib.scrypt(
            password.encode("utf-8"), salt=self.salt, n=n, r=self.r, p=self.p, maxmem=256 * n * self.r + (1 << 20), dklen=len(self.digest)
        )


def hash_password(password: str) -> str:
    """The `$scrypt$...` form of `password`, with a new random salt."""
    salt = secrets.token_bytes(16)
    digest = _Hash(LOG2_N, R, P, salt, b"\0" * 32)._derive(password)
    return f"${SCHEME}$ln={LOG2_N},r={R},p={P}${_b64(salt)}${_b64(digest)}"


# Checked when the user name is unknown, so that a wrong name costs as long as a wrong password.
_DECOY = _Hash(LOG2_N, R, P, b"vsmtp-decoy-salt", b"\0" * 32)


class PasswordFile:
    CHECK_EVERY = 1.0  # seconds between looks at the file

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Read `path`; ConfigError names the file and line of the first broken entry."""
        self.path = Path(path)
        self._lock = threading.Lock()  # checks run in worker threads
        self._users: dict[str, _Hash] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._broken: tuple[int, int, int] | None = None  # the stamp of a broken version, said once
        self._checked = 0.0
        self._refresh(strict=True)

    def __len__(self) -> int:
        return len(self._users)

    def check(self, username: str, password: str) -> bool:
        """Whether `password` is `username`'s. Takes tens of milliseconds on purpose: call
        it from a worker thread."""
        with self._lock:
            self._refresh(strict=False)
            stored = self._users.get(username)
        if stored is None:
            _DECOY.matches(password)
            return False
        return stored.matches(password)

    def _refresh(self, *, strict: bool) -> None:
        now = time.monotonic()
        if not strict and now - self._checked < self.CHECK_EVERY:
            return
        self._checked = now
        stamp = None
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            users = _parse(self.path, self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            text = str(exc) if isinstance(exc, ConfigError) else f"{self.path}: cannot read: {exc}"
            if strict:
                raise ConfigError(f"auth.passwords: {text}") from exc
            if stamp != self._broken:
                log.error("%s; keeping the %d users read before", text, len(self._users))
                self._broken = stamp
            return
        self._users, self._stamp = users, stamp
        if not strict:
            log.info("%s: %d users (file changed)", self.path, len(users))


def _parse(path: Path, text: str) -> dict[str, _Hash]:
    users: dict[str, _Hash] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        username, sep, hashed = entry.rpartition(":")
        where = f"{path}, line {number}"
        if not sep or not USER_NAME.match(username):
            raise ConfigError(f"{where}: expected user:$scrypt$... (a user name without spaces, ':' or '#')")
        if username in users:
            raise ConfigError(f"{where}: {username} is listed twice")
        try:
            users[username] = _Hash.parse(hashed)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return users


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))
