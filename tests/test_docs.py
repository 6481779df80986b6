"""The documentation's examples work: every TOML block loads, every Python block runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from vsmtp import config as config_mod

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"```(toml|python)\n(.*?)```", re.DOTALL)


def blocks(kind: str) -> list[tuple[str, str]]:
    found = []
    for path in sorted(DOCS.glob("*.md")):
        for match in BLOCK.finditer(path.read_text()):
            if match.group(1) == kind:
                found.append((f"{path.name}:{path.read_text()[: match.start()].count(chr(10)) + 1}", match.group(2)))
    return found


@pytest.mark.parametrize(("where", "text"), blocks("toml"), ids=[w for w, _ in blocks("toml")])
def test_toml_examples(where: str, text: str, tmp_path: Path) -> None:
    if "[project" in text:  # a packaging example, not vsmtp configuration
        tomllib.loads(text)
        return
    path = tmp_path / "example.toml"
    path.write_text(text)
    config = config_mod.load(path)  # raises ConfigError, naming the line, if the example is wrong
    from vsmtp.plugins import PluginManager, available

    # Plugin sections are checked by their plugins (plugins/example is installed by its own test).
    PluginManager().load([name for name in config.plugins if name in available()], config.plugin)


@pytest.mark.parametrize(("where", "text"), blocks("python"), ids=[w for w, _ in blocks("python")])
def test_python_examples(where: str, text: str, tmp_path: Path) -> None:
    if "@rule." in text:  # a rules file: loaded as vsmtp loads one
        from vsmtp.rules import RulesFile

        path = tmp_path / "rules.py"
        path.write_text(text)
        assert len(RulesFile.load(path)) == text.count("@rule.")
        return
    exec(compile(text, where, "exec"), {})


def test_plugin_example_counts_deliveries() -> None:
    [(_, text)] = [b for b in blocks("python") if "delivered_by_domain" in b[1]]
    namespace: dict[str, object] = {}
    exec(compile(text, "hooks.md", "exec"), namespace)
    from vsmtp.queue.events import DeliverySucceeded

    hook = namespace["vsmtp_event"]
    hook(DeliverySucceeded(at=0, queue_id="Q", recipient="a@example.org", transport="maildir", detail=""))  # type: ignore[operator]
    assert namespace["delivered_by_domain"] == {"example.org": 1}


def test_every_config_key_is_documented() -> None:
    """Each leaf key appears as `key`, each table as [table] or [[table]]."""
    import dataclasses

    text = (DOCS / "configuration.md").read_text()
    missing = []
    for cls in (
        config_mod.Config,
        config_mod.ListenerConfig,
        *[type(f.default) for f in dataclasses.fields(config_mod.Config) if dataclasses.is_dataclass(f.default)],
    ):
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            if dataclasses.is_dataclass(f.default):
                documented = f"`[{f.name}]`" in text
            elif f.name == "listeners":
                documented = "`[[listeners]]`" in text
            elif f.name == "plugin":
                documented = "`plugin.NAME`" in text
            else:
                documented = f"`{f.name}`" in text
            if not documented:
                missing.append(f"{cls.__name__}.{f.name}")
    assert not missing, f"undocumented configuration keys: {missing}"


def test_the_state_diagram_in_the_docs_is_current() -> None:
    import runpy

    tool = runpy.run_path(str(DOCS.parent / "tools" / "statediagram.py"))
    assert "```mermaid\n" + tool["mermaid"]() + "```" in (DOCS / "architecture.md").read_text()


def test_every_event_and_field_is_documented() -> None:
    """docs/events.md has a row for each tag, naming every payload field."""
    import dataclasses

    from vsmtp.queue.events import EVENTS

    rows = {line.split("|")[1].strip(" `"): line for line in (DOCS / "events.md").read_text().splitlines() if line.startswith("| `")}
    missing = [
        f"{tag}.{f.name}"
        for tag, cls in EVENTS.items()
        for f in dataclasses.fields(cls)
        if f.name != "at" and f"`{f.name}`" not in rows.get(tag, "")
    ]
    missing += [tag for tag in EVENTS if tag not in rows]
    assert not missing, f"undocumented in docs/events.md: {missing}"
