"""The layers stay apart: sans-IO SMTP touches no I/O, and the journal never imports vsmtp."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(package: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_sans_io_smtp_imports_no_io() -> None:
    forbidden = {"trio", "socket", "ssl", "asyncio", "selectors", "time", "vsmtp_journal"}
    for path, names in imported_modules(ROOT / "vsmtp" / "smtp").items():
        bad = {n for n in names if n.split(".")[0] in forbidden}
        assert not bad, f"{path} imports {bad}"


def test_journal_imports_nothing_from_vsmtp() -> None:
    modules = imported_modules(ROOT / "journal" / "vsmtp_journal")
    assert modules, "the journal package was not found"
    for path, names in modules.items():
        bad = {n for n in names if n.split(".")[0] == "vsmtp"}
        assert not bad, f"{path} imports {bad}"


def test_queue_state_and_policy_do_no_io() -> None:
    forbidden = {"trio", "socket", "os", "time", "lmdb"}
    for name in ("state.py", "policy.py", "events.py"):
        path = ROOT / "vsmtp" / "queue" / name
        names = imported_modules(path.parent)[str(path.relative_to(ROOT))]
        bad = {n for n in names if n.split(".")[0] in forbidden}
        assert not bad, f"{path} imports {bad}"
