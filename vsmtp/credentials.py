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
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConfigError
from .rules.objects import FileBacked

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
        derived = _scrypt(password, self.salt, log2_n=self.log2_n, r=self.r, p=self.p, length=len(self.digest))
        return hmac.compare_digest(derived, self.digest)


def _scrypt(password: str, salt: bytes, *, log2_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20), dklen=length)


def hash_password(password: str) -> str:
    """The `$scrypt$...` form of `password`, with a new random salt."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, log2_n=LOG2_N, r=R, p=P, length=32)
    return f"${SCHEME}$ln={LOG2_N},r={R},p={P}${_b64(salt)}${_b64(digest)}"


# Checked when the user name is unknown, so that a wrong name costs as long as a wrong password.
_DECOY = _Hash(LOG2_N, R, P, b"vsmtp-decoy-salt", b"\0" * 32)


class PasswordFile(FileBacked):
    """The users and their hashes, read again when the file changes (FileBacked)."""

    _users: dict[str, _Hash] = {}  # noqa: RUF012 - replaced, never mutated

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Read `path`; ConfigError names the file and line of the first broken entry."""
        self._lock = threading.Lock()  # checks run in worker threads: one of them reads a new version
        try:
            super().__init__(path)
        except ValueError as exc:
            raise ConfigError(f"auth.passwords: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"auth.passwords: {path}: cannot read: {exc.strerror}") from exc
        if self._stamp is None:
            raise ConfigError(f"auth.passwords: {path}: cannot read: no such file")

    def __len__(self) -> int:
        return len(self._users)

    def check(self, username: str, password: str) -> bool:
        """Whether `password` is `username`'s. Takes tens of milliseconds on purpose: call
        it from a worker thread."""
        with self._lock:
            self._refresh()
            stored = self._users.get(username)
        if stored is None:
            _DECOY.matches(password)
            return False
        return stored.matches(password)

    def _load(self, lines: Iterable[str]) -> None:
        users: dict[str, _Hash] = {}
        for number, line in enumerate(lines, start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            username, sep, hashed = entry.rpartition(":")
            where = f"{self.path}, line {number}"
            if not sep or not USER_NAME.match(username):
                raise ValueError(f"{where}: expected user:$scrypt$... (a user name without spaces, ':' or '#')")
            if username in users:
                raise ValueError(f"{where}: {username} is listed twice")
            try:
                users[username] = _Hash.parse(hashed)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from exc
        if self._stamp is not None or users:
            log.info("%s: %d users", self.path, len(users))
        self._users = users

    def _kept(self) -> str:
        return f"the {len(self._users)} users read before"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))
