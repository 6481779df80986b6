"""Runs a stage: the rules file first, then the plugins in configured order; the first
verdict other than next settles it. A rule or hook that raises is a HookFailed naming who
raised (the session answers 451 4.3.0 for that transaction and carries on)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from .. import telemetry
from ..config import Config
from ..plugins import PluginManager
from . import verdicts
from .context import Context
from .loader import STAGES, RulesFile
from .verdicts import NEXT, Verdict

log = logging.getLogger(__name__)


class HookFailed(Exception):
    def __init__(self, by: str, stage: str) -> None:
        super().__init__(f"{by} raised at the {stage} stage")
        self.by = by
        self.stage = stage


class Stages:
    def __init__(self, plugins: PluginManager | None = None, rules: RulesFile | None = None) -> None:
        self.plugins = plugins
        self.rules = rules
        # Known once (plugins register at start, rules load with the settings): every SMTP
        # command asks, and most stages of most servers have nothing to run.
        self._active = frozenset(
            stage
            for stage in STAGES
            if (rules is not None and rules.rules(stage))
            or (plugins is not None and getattr(plugins.pm.hook, f"vsmtp_{stage}").get_hookimpls())
        )

    @classmethod
    def build(cls, config: Config, plugins: PluginManager | None = None) -> Stages:
        """The configuration's rules file (RulesError names its line) and `plugins`."""
        return cls(plugins, RulesFile.load(config.rules) if config.rules else None)

    def active(self, stage: str) -> bool:
        """Whether anything runs at `stage` (so a session can skip building what it would see)."""
        return stage in self._active

    async def run(self, stage: str, ctx: Context, **kwargs: Any) -> Verdict:
        ctx.stage = stage
        kwargs["ctx"] = ctx
        if self.rules is not None:
            for name, function in self.rules.rules(stage):
                verdict = await self._call(f"rules:{name}", stage, ctx, function, [kwargs["ctx"]])
                if verdict.kind != "next":
                    return verdict.at_stage(stage)
        if self.plugins is not None:
            caller = getattr(self.plugins.pm.hook, f"vsmtp_{stage}")
            for impl in caller.get_hookimpls():  # registration order: the configured order
                args = [kwargs[name] for name in impl.argnames]
                verdict = await self._call(impl.plugin_name, stage, ctx, impl.function, args)
                if verdict.kind != "next":
                    return verdict.at_stage(stage)
        return NEXT

    @staticmethod
    async def _call(by: str, stage: str, ctx: Context, function: Any, args: list[Any]) -> Verdict:
        ctx.by = by
        with telemetry.span(f"hook {by}", attributes={"vsmtp.stage": stage, "vsmtp.hook": by}) as span:
            try:
                result = function(*args)
                if inspect.isawaitable(result):
                    result = await result
                ctx.take_changes()
                verdict = verdicts.of(result, by)
                span.set_attribute("vsmtp.verdict", verdict.kind)
                return verdict
            except Exception as exc:
                log.exception("%s raised at the %s stage (session %s)", by, stage, ctx.session_id)
                raise HookFailed(by, stage) from exc
            finally:
                ctx.by = ""
