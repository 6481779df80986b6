"""Objects for rules: IP networks, domains, regexes, and file-backed sets and maps.

    blocked = Networks("192.0.2.0/24", "2001:db8::/32")
    ctx.client.address in blocked

    ours = Domains("example.com", subdomains=True)   # example.com and *.example.com
    "mail.example.com" in ours; "bob@example.com" in ours   # an address is matched by its domain

    spammy = Regex(r"(?i)viagra")
    spammy.search(ctx.message.header("Subject") or "")

    friends = FileSet("/etc/vsmtp/friends.txt")       # one entry per line, "#" comments
    aliases = FileMap("/etc/vsmtp/aliases.csv")       # "key,value" lines
    aliases.get("postmaster@example.com")

File-backed objects read their file again when it changes (looked at no more than once a
second), so an edit takes effect without a reload. A missing file reads as empty and is
logged once.
"""

from __future__ import annotations

import csv
import ipaddress
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..queue import policy

log = logging.getLogger(__name__)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Networks:
    """IPv4 and IPv6 networks in CIDR notation; `address in networks`."""

    def __init__(self, *cidrs: str) -> None:
        self.networks = tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)

    def __contains__(self, address: object) -> bool:
        try:
            return policy.may_relay(address if isinstance(address, IpAddress) else str(address), self.networks)
        except ValueError:
            return False  # not an address

    def __repr__(self) -> str:
        return f"Networks({', '.join(repr(str(n)) for n in self.networks)})"


class Domains:
    """Domain names, matched without regard to case; with subdomains=True a name also matches
    every name under it. An address matches by its domain."""

    def __init__(self, *names: str, subdomains: bool = False) -> None:
        self.names = frozenset(policy.domain_key(n.strip()) for n in names)
        self.subdomains = subdomains

    def __contains__(self, value: object) -> bool:
        domain = policy.domain_key(str(value).rpartition("@")[2])  # bücher.example is xn--bcher-kva.example
        if domain in self.names:
            return True
        if self.subdomains:
            parts = domain.split(".")
            return any(".".join(parts[i:]) in self.names for i in range(1, len(parts)))
        return False

    def __repr__(self) -> str:
        return f"Domains({', '.join(map(repr, sorted(self.names)))}, subdomains={self.subdomains})"


class Regex:
    """A compiled regular expression; `text in regex` is a search."""

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self.pattern = re.compile(pattern, flags)

    def __contains__(self, text: object) -> bool:
        return self.pattern.search(str(text)) is not None

    def search(self, text: str) -> re.Match[str] | None:
        return self.pattern.search(text)

    def __repr__(self) -> str:
        return f"Regex({self.pattern.pattern!r})"


class FileBacked:
    """A file read again when it changes: its inode, nanosecond mtime or size (looked at no
    more than every CHECK_EVERY seconds). Subclasses parse it in _load, which may raise
    ValueError for a broken file: at construction that is the caller's error; later the
    contents read before stay, and the broken version is logged once. (The rules' FileSet
    and FileMap, the files plugin's tables, and the AUTH password file.)"""

    CHECK_EVERY = 1.0  # seconds between looks at the file
    WARN_MISSING = True  # a missing file is logged (once): a table to be written starts missing

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Reads the file now: ValueError (a broken file) and OSError (unreadable) propagate."""
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._broken: tuple[int, int, int] | None = None  # a version that failed, said once
        self._checked = 0.0
        self._missing_logged = False
        self._refresh(force=True, strict=True)

    def _refresh(self, *, force: bool = False, strict: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.CHECK_EVERY:
            return
        self._checked = now
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self.WARN_MISSING and not self._missing_logged:
                log.warning("%s: file not found; read as empty", self.path)
                self._missing_logged = True
            self._load([])
            self._stamp = None
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a file replaced by rename has a new inode
        if stamp == self._stamp or (stamp == self._broken and not strict):
            return
        try:
            with self.path.open(encoding="utf-8", newline="") as f:
                self._load(f)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            if strict:
                raise
            if stamp != self._broken:
                log.error("%s; keeping %s", exc if isinstance(exc, ValueError) else f"{self.path}: cannot read: {exc}", self._kept())
                self._broken = stamp
            return
        self._stamp = stamp
        self._missing_logged = False

    def _load(self, lines: Iterable[str]) -> None:
        raise NotImplementedError

    def _kept(self) -> str:
        """What stays in force when a new version cannot be read, for the log."""
        return "what was read before"


def _entries(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        entry = line.split("#", 1)[0].strip()
        if entry:
            yield entry


class FileSet(FileBacked):
    """A set of strings from a file, one per line ("#" starts a comment), compared without
    regard to case. `value in fileset`."""

    _items: frozenset[str] = frozenset()

    def _load(self, lines: Iterable[str]) -> None:
        self._items = frozenset(e.lower() for e in _entries(lines))

    def __contains__(self, value: object) -> bool:
        self._refresh()
        return str(value).lower() in self._items

    def __len__(self) -> int:
        self._refresh()
        return len(self._items)


class FileMap(FileBacked):
    """A map from a CSV file: the first column is the key (compared without regard to case),
    the rest the value (a string for two columns, a tuple for more; () for a key alone).
    Lines starting with "#" are comments."""

    _rows: dict[str, tuple[str, tuple[str, ...]]] = {}  # noqa: RUF012 - lower key -> (key as written, values); replaced, never mutated

    def _load(self, lines: Iterable[str]) -> None:
        loaded: dict[str, tuple[str, tuple[str, ...]]] = {}
        for row in csv.reader(line for line in lines if not line.lstrip().startswith("#")):
            if not row or not row[0].strip():
                continue
            key, *values = (cell.strip() for cell in row)
            loaded[key.lower()] = (key, tuple(values))
        self._rows = loaded

    def get(self, key: str, default: str | tuple[str, ...] | None = None) -> str | tuple[str, ...] | None:
        self._refresh()
        row = self._rows.get(key.lower())
        if row is None:
            return default
        return row[1][0] if len(row[1]) == 1 else row[1]

    def __contains__(self, key: object) -> bool:
        self._refresh()
        return str(key).lower() in self._rows

    def __len__(self) -> int:
        self._refresh()
        return len(self._rows)

    def __iter__(self) -> Iterator[str]:
        """The keys, as the file writes them."""
        self._refresh()
        return iter([key for key, _ in self._rows.values()])
