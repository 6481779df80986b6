"""The plugin manager: loads the plugins named in the config and calls their hooks.

Plugins register under the entry-point group "vsmtp"; only those the configuration names
are loaded, in the configured order. Hook implementations may be sync or async.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

log = logging.getLogger(__name__)
GROUP = "vsmtp"


def available() -> dict[str, str]:
    """Installed plugins: entry-point name -> 'distribution version'."""
    found = {}
    for ep in entry_points(group=GROUP):
        dist = ep.dist
        found[ep.name] = f"{dist.name} {dist.version}" if dist is not None else "?"
    return found


def describe(configured: Iterable[str]) -> list[dict[str, Any]]:
    """Every installed plugin (and every configured one, installed or not): its distribution
    and version, whether the configuration loads it, and the hooks it implements (or why it
    does not import)."""
    wanted = list(configured)
    rows = []
    installed = {ep.name: ep for ep in entry_points(group=GROUP)}
    for name in sorted(installed.keys() | set(wanted)):
        ep = installed.get(name)
        row: dict[str, Any] = {"name": name, "loaded": name in wanted, "installed": ep is not None}
        if ep is not None:
            row["distribution"] = ep.dist.name if ep.dist is not None else "?"
            row["version"] = ep.dist.version if ep.dist is not None else "?"
            try:
                manager = pluggy.PluginManager(GROUP)
                manager.add_hookspecs(hookspecs)
                plugin = ep.load()
                manager.register(plugin, name=name)
                row["hooks"] = sorted(h.name for h in manager.get_hookcallers(plugin) or [])
            except Exception as exc:
                row["error"] = f"does not load: {exc}"
        rows.append(row)
    return rows


class PluginManager:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)

    def load(self, names: Iterable[str], sections: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        by_name = {ep.name: ep for ep in entry_points(group=GROUP)}
        for name in names:
            ep = by_name.get(name)
            if ep is None:
                known = ", ".join(sorted(by_name)) or "none installed"
                raise PluginError(f"plugin {name!r} is not installed (entry points in group {GROUP!r}: {known})")
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"plugin {name!r} failed to load: {exc}") from exc
            self.register(plugin, name)
        self.configure(sections or {})

    def configure(self, sections: Mapping[str, Mapping[str, Any]]) -> None:
        """Hand each loaded plugin its `[plugin.NAME]` section (vsmtp_configure). A plugin that
        refuses its settings (ValueError) is a PluginError naming it."""
        for impl in self.pm.hook.vsmtp_configure.get_hookimpls():
            name = impl.plugin_name
            kwargs = {"name": name, "section": dict(sections.get(name, {}))}
            try:
                impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception as exc:
                raise PluginError(f"plugin {name!r}: [plugin.{name}]: {exc}") from exc

    def register(self, plugin: object, name: str) -> None:
        self.pm.register(plugin, name=name)
        log.info("plugin %s loaded (hooks: %s)", name, ", ".join(h.name for h in self.pm.get_hookcallers(plugin) or []))

    async def notify_event(self, event: Any, position: int) -> None:
        """Call every vsmtp_event observer; one failing observer does not stop the others."""
        await self._call_each("vsmtp_event", {"event": event, "position": position})

    async def _call_each(self, hook_name: str, kwargs: dict[str, Any]) -> None:
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration order (pluggy itself calls LIFO)
            try:
                result = impl.function(*[kwargs[name] for name in impl.argnames])
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("plugin %s: %s raised", impl.plugin_name, hook_name)
