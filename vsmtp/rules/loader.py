"""The rules file: a Python file of small functions, each decorated with its stage.

    from vsmtp.rules import rule, deny, Networks

    blocked = Networks("192.0.2.0/24")

    @rule.connect
    def blocklist(ctx):
        if ctx.client.address in blocked:
            return deny("554 5.7.1 your network is blocked")

Loading runs the file once, with `rule` collecting the decorated functions in file order.
An error (syntax, or an exception while the file runs) is a RulesError that names the file
and line; the caller keeps the rules it had.
"""

from __future__ import annotations

import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError

STAGES = ("connect", "helo", "auth", "mail", "rcpt", "data", "postq", "delivery")

Rule = Callable[..., Any]


class RulesError(ConfigError):
    """The rules file does not load; the message names the file and the line."""


class _Collector:
    """`rule.STAGE` decorators; while a file loads they fill its table."""

    def __init__(self) -> None:
        self.table: dict[str, list[tuple[str, Rule]]] | None = None

    def _register(self, stage: str, function: Rule) -> Rule:
        if self.table is None:
            raise RuntimeError("rules are registered only while vsmtp loads a rules file")
        self.table[stage].append((function.__name__, function))
        return function

    def connect(self, function: Rule) -> Rule:
        return self._register("connect", function)

    def helo(self, function: Rule) -> Rule:
        return self._register("helo", function)

    def auth(self, function: Rule) -> Rule:
        return self._register("auth", function)

    def mail(self, function: Rule) -> Rule:
        return self._register("mail", function)

    def rcpt(self, function: Rule) -> Rule:
        return self._register("rcpt", function)

    def data(self, function: Rule) -> Rule:
        return self._register("data", function)

    def postq(self, function: Rule) -> Rule:
        return self._register("postq", function)

    def delivery(self, function: Rule) -> Rule:
        return self._register("delivery", function)


rule = _Collector()


class RulesFile:
    def __init__(self, path: Path, table: dict[str, list[tuple[str, Rule]]]) -> None:
        self.path = path
        self.table = table

    def rules(self, stage: str) -> list[tuple[str, Rule]]:
        return self.table.get(stage, [])

    def __len__(self) -> int:
        return sum(len(rules) for rules in self.table.values())

    @classmethod
    def load(cls, path: str | Path) -> RulesFile:
        path = Path(path)
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RulesError(f"{path}: cannot read the rules file: {exc.strerror}") from exc
        try:
            code = compile(source, str(path), "exec")
        except SyntaxError as exc:
            raise RulesError(f"{path}:{exc.lineno}: {exc.msg}") from exc
        module = types.ModuleType(f"vsmtp_rules_{abs(hash(str(path)))}")
        module.__file__ = str(path)
        table: dict[str, list[tuple[str, Rule]]] = {stage: [] for stage in STAGES}
        rule.table = table
        try:
            exec(code, module.__dict__)  # the administrator's own file, by the configuration's path
        except Exception as exc:
            line = next((f.lineno for f in reversed(traceback.extract_tb(exc.__traceback__)) if f.filename == str(path)), None)
            raise RulesError(f"{path}:{line}: {type(exc).__name__}: {exc}") from exc
        finally:
            rule.table = None
        return cls(path, table)
