"""The files plugin's tables: CSV read and written, shared between processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import vsmtp_files
from vsmtp_files import Table


def test_a_table_reads_csv_lists_and_values(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("# comment\nBob@Example.com,bob,archive\nalice@example.com,alice\nlisted@example.com\n")
    table = Table(path)
    assert table.get("bob@example.com") == ("bob", "archive") and table.get("ALICE@example.com") == "alice"
    assert "listed@example.com" in table and table.get("listed@example.com") == () and len(table) == 3
    assert "nobody" not in table and table.get("nobody", "x") == "x"
    with pytest.raises(PermissionError, match="read-only"):
        table.set("k", "v")
    path.write_text("other,1\n")  # an edit is seen at the next read
    assert list(table) == ["other"]


def test_writes_keep_the_other_rows_and_refuse_line_breaks(tmp_path: Path) -> None:
    table = Table(tmp_path / "sub" / "t.csv", writable=True)
    table.set("a", "1")
    table.add("b")
    table.set("with,comma", "x,y")
    table.set("a", "2")
    table.remove("b")
    assert Table(tmp_path / "sub" / "t.csv").get("with,comma") == "x,y"
    assert dict((k, table.get(k)) for k in table) == {"a": "2", "with,comma": "x,y"}
    with pytest.raises(ValueError, match="one-line"):
        table.set("a", "1\r\nb,2")


def _add_many(path: str, prefix: str) -> None:
    table = Table(path, writable=True)
    for i in range(50):
        table.set(f"{prefix}{i}", str(i))


def test_two_processes_writing_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "t.csv")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_add_many, args=(path, p)) for p in ("x", "y")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert len(Table(path)) == 100


def test_a_named_database_follows_the_configuration(tmp_path: Path) -> None:
    named = vsmtp_files.database("t")
    vsmtp_files.vsmtp_configure({"t": {"path": str(tmp_path / "one.csv"), "writable": True}})
    named.set("k", "1")
    vsmtp_files.vsmtp_configure({"t": {"path": str(tmp_path / "two.csv")}})
    assert "k" not in named
    vsmtp_files.vsmtp_configure({})
    with pytest.raises(LookupError, match=r"add \[plugin.files.t\]"):
        named.get("k")
