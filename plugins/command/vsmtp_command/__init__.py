"""command: run an external program at a stage, the message on its standard input; its exit
status chooses the verdict and its first line of output may become a header.

    plugins = ["command"]

    [plugin.command.scan]
    stage = "data"                      # connect, helo, mail, rcpt, data or postq
    argv = ["/usr/local/bin/scan", "--stdin"]
    timeout = 10                        # seconds; a program still running then is killed
    header = "X-Scan"                   # its first output line, added as this header
    exit = { 0 = "next", 1 = "deny", 75 = "tempfail" }   # the default

Verdicts an exit status may name: next, accept, deny, reject, tempfail, faccept, or
quarantine:NAME. A deny or reject answers with the program's first output line when that
is an SMTP refusal ("550 5.7.1 virus found"), else with `reply` (default "550 5.7.1
Rejected by NAME"); tempfail answers "451 4.7.1 NAME: try again later". A status the map
does not name, a timeout, or a program that cannot start is a failure of the hook: 451
4.3.0 for the transaction, logged with the plugin's name (as every raising hook).

Before data the program's standard input is empty. The environment tells it the rest:
VSMTP_STAGE, VSMTP_CLIENT_ADDRESS, VSMTP_HELO, VSMTP_SENDER, VSMTP_RECIPIENTS (comma
separated), VSMTP_RECIPIENT (at rcpt), VSMTP_QUEUE_ID (at postq), VSMTP_TLS (0 or 1).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

import vsmtp
from vsmtp import Verdict, accept, deny, faccept, quarantine, reject

log = logging.getLogger("vsmtp.command")

STAGES = ("connect", "helo", "mail", "rcpt", "data", "postq")
DEFAULT_EXIT = {0: "next", 1: "deny", 75: "tempfail"}  # 75: EX_TEMPFAIL (sysexits.h)
MAX_OUTPUT = 64 * 1024  # what is kept of its output
KNOWN_KEYS = {"stage", "argv", "timeout", "header", "exit", "reply"}


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    stage: str
    argv: tuple[str, ...]
    timeout: float
    header: str
    exit: Mapping[int, str]
    reply: str


_commands: dict[str, list[Command]] = {}  # stage -> its commands, in configured order


@vsmtp.hookimpl
def vsmtp_configure(section: Mapping[str, Any]) -> None:
    by_stage: dict[str, list[Command]] = {}
    for name, table in section.items():
        command = _command(name, table)
        by_stage.setdefault(command.stage, []).append(command)
    _commands.clear()
    _commands.update(by_stage)


def _command(name: str, table: Any) -> Command:
    if not isinstance(table, Mapping):
        raise ValueError(f"{name}: expected a table [plugin.command.{name}] with stage and argv")
    unknown = set(table) - KNOWN_KEYS
    if unknown:
        raise ValueError(f"{name}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(KNOWN_KEYS))})")
    stage = table.get("stage", "data")
    if stage not in STAGES:
        raise ValueError(f"{name}.stage: {stage!r} is not one of {', '.join(STAGES)}")
    argv = table.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"{name}.argv: expected the program and its arguments, a list of strings")
    timeout = table.get("timeout", 10)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 3600:
        raise ValueError(f"{name}.timeout: expected seconds, more than 0 and at most 3600")
    exits = dict(DEFAULT_EXIT)
    for status, verdict in dict(table.get("exit", {})).items():
        if not str(status).isdigit() or not 0 <= int(status) <= 255:
            raise ValueError(f"{name}.exit: {status!r} is not an exit status (0-255)")
        _verdict(verdict, "550 5.7.1 x", name)  # checked now, not at the first message
        exits[int(status)] = verdict
    reply = table.get("reply", f"550 5.7.1 Rejected by {name}")
    deny(reply)  # a refusal reply, or ValueError
    header = table.get("header", "")
    if header and not all(33 <= ord(c) <= 126 and c != ":" for c in header):
        raise ValueError(f"{name}.header: {header!r} is not a header name")
    return Command(name, stage, tuple(argv), float(timeout), header, exits, reply)


def _verdict(word: Any, reply: str, name: str) -> Verdict | None:
    if not isinstance(word, str):
        raise ValueError(f"{name}.exit: {word!r} is not a verdict")
    if word == "next":
        return None
    if word == "accept":
        return accept()
    if word == "faccept":
        return faccept()
    if word == "deny":
        return deny(reply)
    if word == "reject":
        return reject(reply)
    if word == "tempfail":
        return deny(f"451 4.7.1 {name}: try again later")
    if word.startswith("quarantine:"):
        return quarantine(word.removeprefix("quarantine:"))
    raise ValueError(f"{name}.exit: {word!r} is not a verdict (next, accept, deny, reject, tempfail, faccept, quarantine:NAME)")


async def _run(stage: str, ctx: Any) -> Verdict | None:
    for command in _commands.get(stage, ()):
        verdict = await _run_one(command, ctx)
        if verdict is not None:
            return verdict
    return None


async def _run_one(command: Command, ctx: Any) -> Verdict | None:
    stdin = ctx.message.raw if ctx.message is not None else b""
    env = {
        **os.environ,
        "VSMTP_STAGE": ctx.stage,
        "VSMTP_CLIENT_ADDRESS": str(ctx.client.address),
        "VSMTP_HELO": ctx.helo,
        "VSMTP_SENDER": ctx.sender or "",
        "VSMTP_RECIPIENTS": ",".join(ctx.recipients),
        "VSMTP_RECIPIENT": ctx.recipient,
        "VSMTP_QUEUE_ID": ctx.queue_id,
        "VSMTP_TLS": "1" if ctx.tls else "0",
    }
    with trio.move_on_after(command.timeout) as scope:
        done = await trio.run_process(command.argv, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False, env=env)
    if scope.cancelled_caught:  # run_process killed it
        raise TimeoutError(f"{command.name}: {command.argv[0]} still running after {command.timeout:g}s")
    output = done.stdout[:MAX_OUTPUT].decode("utf-8", "replace")
    first = output.strip().splitlines()[0].strip() if output.strip() else ""
    word = command.exit.get(done.returncode)
    if word is None:
        errors = done.stderr[:500].decode("utf-8", "replace").strip()
        raise RuntimeError(f"{command.name}: {command.argv[0]} exited with status {done.returncode}: {errors or first or 'no output'}")
    if command.header and first:
        ctx.add_header(command.header, first[:900])
    reply = first if _is_refusal(first) else command.reply
    return _verdict(word, reply, command.name)


def _is_refusal(line: str) -> bool:
    try:
        deny(line)
    except ValueError:
        return False
    return True


# One hook per stage; each runs the commands configured for it (none: nothing to do).
@vsmtp.hookimpl
async def vsmtp_connect(ctx: Any) -> Verdict | None:
    return await _run("connect", ctx)


@vsmtp.hookimpl
async def vsmtp_helo(ctx: Any) -> Verdict | None:
    return await _run("helo", ctx)


@vsmtp.hookimpl
async def vsmtp_mail(ctx: Any) -> Verdict | None:
    return await _run("mail", ctx)


@vsmtp.hookimpl
async def vsmtp_rcpt(ctx: Any) -> Verdict | None:
    return await _run("rcpt", ctx)


@vsmtp.hookimpl
async def vsmtp_data(ctx: Any) -> Verdict | None:
    return await _run("data", ctx)


@vsmtp.hookimpl
async def vsmtp_postq(ctx: Any) -> Verdict | None:
    return await _run("postq", ctx)
