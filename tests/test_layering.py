"""The layers stay apart: sans-IO SMTP touches no I/O, and the journal never imports vsmtp."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vsmtp

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


def _vsmtp_imports(path: str) -> set[str]:
    """The vsmtp modules one file imports, absolute and relative, as dotted names."""
    file = ROOT / path
    package = ".".join(file.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), filename=path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return {n for n in names if n == "vsmtp" or n.startswith("vsmtp.")}


def _files(folder: str) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*.py")]


def test_the_session_writes_no_files_itself() -> None:
    """Exports, bodies and records are other modules' business: the session conducts."""
    bad = {n for n in _vsmtp_imports("vsmtp/net/session.py") if n.startswith(("vsmtp.queue.export", "vsmtp.mail.export.save"))}
    assert not bad, bad


def test_rules_do_not_reach_into_the_network_or_delivery() -> None:
    for path in _files("vsmtp/rules"):
        bad = {n for n in _vsmtp_imports(path) if n.startswith(("vsmtp.net", "vsmtp.delivery"))}
        assert not bad, f"{path} imports {bad}"


def test_the_event_sourced_core_imports_only_the_journal_and_config() -> None:
    core = {"vsmtp.queue.events", "vsmtp.queue.state", "vsmtp.queue.policy"}
    allowed = core | {"vsmtp.config", "vsmtp.queue"}
    for name in core:
        path = name.replace(".", "/") + ".py"
        bad = {n for n in _vsmtp_imports(path) if not any(n == a or n.startswith(a + ".") for a in allowed)}
        assert not bad, f"{path} imports {bad}"
        names = imported_modules(ROOT / "vsmtp" / "queue")[path]
        outside = {n for n in names if n.split(".")[0] not in {"vsmtp", "vsmtp_journal", "immutables", "__future__"}}
        assert all(n.split(".")[0] in {"dataclasses", "typing", "collections", "functools", "ipaddress", "re"} for n in outside), outside


def test_server_and_session_do_not_import_each_other() -> None:
    assert not {n for n in _vsmtp_imports("vsmtp/net/session.py") if n.startswith("vsmtp.net.server")}


def test_first_party_plugins_import_only_the_public_api() -> None:
    for path in [p for folder in (ROOT / "plugins").iterdir() if folder.is_dir() for p in _files(str(folder.relative_to(ROOT)))]:
        if "/build/" in path:
            continue
        public = {"vsmtp", *(f"vsmtp.{name}" for name in vsmtp.__all__)}
        bad = _vsmtp_imports(path) - public
        assert not bad, f"{path} imports {bad}"


def test_a_receiving_process_loads_no_delivery_and_no_http_stack() -> None:
    """What a receiving process imports (python -m vsmtp.workers) is what receiving needs:
    not the delivery side (DANE, DKIM signing, the scheduler), not prometheus_client (the
    delivery process serves /metrics), not dnspython's DNS-over-HTTPS stack (httpx2, h2),
    which the test extra installs, and not OpenTelemetry's SDK, which is imported once
    telemetry is configured. Each is megabytes in every receiving process."""
    script = "import sys, vsmtp.workers; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=ROOT).stdout.split())
    assert "vsmtp.net.session" in loaded  # the probe imports what a receiving process runs
    unwanted = {"vsmtp.delivery", "vsmtp.net.dane", "prometheus_client", "httpx2", "h2", "httpcore2", "opentelemetry.sdk"}
    assert not unwanted & loaded
