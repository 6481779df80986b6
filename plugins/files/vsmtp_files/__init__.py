"""files: CSV databases for rules, key/value or plain lists, read-write when asked.

Named in the configuration, one table per database:

    plugins = ["files"]

    [plugin.files.greylist]
    path = "var/greylist.csv"
    writable = true

and used from the rules file:

    import vsmtp_files
    greylist = vsmtp_files.database("greylist")

    greylist.get("key")           # None, a str (one value) or a tuple (several)
    greylist.set("key", "value")  # writable databases only
    "key" in greylist

A database can also be opened by path without the configuration: `vsmtp_files.Table(path,
writable=True)`.

The file is read as vsmtp.FileMap reads one (CSV: the first column is the key,
compared without regard to case, the others its value; a key alone is a list entry; "#"
lines are comments), but every read notices a change of the file (another process, an
editor) and reads it again. A write
takes an exclusive lock (PATH.lock), reads the file as it is now, changes the one row and
replaces the file atomically (written beside it, fsynced, renamed), so receiving processes
sharing a database do not lose each other's writes. Meant for small state (thousands of
rows), not as a general store: each write rewrites the file.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from collections.abc import Iterator, Mapping
from typing import Any

import vsmtp
from vsmtp import FileMap

Value = str | tuple[str, ...]
_configured: dict[str, Table] = {}


class Table(FileMap):
    """A FileMap (vsmtp.FileMap) that notices a change at every read, and that a rule may
    write when it is writable."""

    CHECK_EVERY = 0.0  # every read: another process may just have written
    WARN_MISSING = False

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = False) -> None:
        super().__init__(path)
        self.writable = writable

    def set(self, key: str, *values: str) -> None:
        """Set `key` to `values` (none: a list entry), replacing what it had."""
        _check(key, values)
        self._write(key, values)

    def add(self, key: str) -> None:
        """A list entry (a key without a value), if it is not there yet."""
        _check(key, ())
        self._write(key, (), keep=True)

    def remove(self, key: str) -> None:
        self._write(key, None)

    def _write(self, key: str, values: tuple[str, ...] | None, *, keep: bool = False) -> None:
        """Under the lock: the file as it is now, with this one row changed (None: removed;
        `keep`: only if the key is not there), written beside it, fsynced and renamed over it."""
        if not self.writable:
            raise PermissionError(f"{self.path} is read-only (open it with writable=True, or writable = true in its [plugin.files.NAME])")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            self._refresh(force=True)
            rows = dict(self._rows)
            if keep and key.lower() in rows:
                return
            if values is None:
                rows.pop(key.lower(), None)
            else:
                rows[key.lower()] = (key, values)
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            for name, cells in rows.values():
                writer.writerow((name, *cells))
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            with open(temporary, "w", encoding="utf-8") as f:
                f.write(out.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
            self._refresh(force=True)

    def __repr__(self) -> str:
        return f"Table({str(self.path)!r}, writable={self.writable})"


def _check(key: str, values: tuple[str, ...]) -> None:
    for cell in (key, *values):
        if not isinstance(cell, str) or "\n" in cell or "\r" in cell:
            raise ValueError(f"a database cell is a one-line string, not {cell!r}")
    if not key.strip():
        raise ValueError("an empty key")


class Database:
    """The database `[plugin.files.NAME]` configures, looked up at each use: a rules file can
    name it when it loads (before the plugin is configured, or while a reload checks it) and
    sees the new table after a reload changes its path."""

    def __init__(self, name: str) -> None:
        self.name = name

    def table(self) -> Table:
        try:
            return _configured[self.name]
        except KeyError:
            known = ", ".join(sorted(_configured)) or "none"
            raise LookupError(
                f"no database {self.name!r}: add [plugin.files.{self.name}] with a path to the configuration (configured: {known})"
            ) from None

    def get(self, key: str, default: Value | None = None) -> Value | None:
        return self.table().get(key, default)

    def set(self, key: str, *values: str) -> None:
        self.table().set(key, *values)

    def add(self, key: str) -> None:
        self.table().add(key)

    def remove(self, key: str) -> None:
        self.table().remove(key)

    def __contains__(self, key: object) -> bool:
        return key in self.table()

    def __len__(self) -> int:
        return len(self.table())

    def __iter__(self) -> Iterator[str]:
        return iter(self.table())


def database(name: str) -> Database:
    """The database configured as `[plugin.files.NAME]`."""
    return Database(name)


@vsmtp.hookimpl
def vsmtp_configure(section: Mapping[str, Any]) -> None:
    tables: dict[str, Table] = {}
    for name, table in section.items():
        if not isinstance(table, Mapping):
            raise ValueError(f"{name}: expected a table [plugin.files.{name}] with path = ...")
        unknown = set(table) - {"path", "writable"}
        if unknown:
            raise ValueError(f"{name}: unknown key {sorted(unknown)[0]!r} (known: path, writable)")
        path, writable = table.get("path"), table.get("writable", False)
        if not isinstance(path, str) or not path:
            raise ValueError(f"{name}.path: expected the database file's path")
        if not isinstance(writable, bool):
            raise ValueError(f"{name}.writable: expected true or false")
        old = _configured.get(name)
        tables[name] = old if old is not None and (str(old.path), old.writable) == (path, writable) else Table(path, writable=writable)
    _configured.clear()
    _configured.update(tables)
