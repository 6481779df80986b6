"""The pipe transport (Postfix's pipe(8)): run a program with the message on its standard
input. The route "pipe:NAME" names [delivery.pipe.NAME]: its command, whose arguments may
hold ${sender}, ${recipient}, ${user}, ${extension}, ${domain}, ${mailbox}, ${queue_id} and
${nexthop}; no shell runs it. vsmtp as root runs it as `user` (and `group`).

- The message goes with LF line ends, as Postfix's pipe hands it, after a Return-Path: and a
  Delivered-To: line (Postfix's R and D flags; `dovecot-lda -f` and most delivery programs
  expect both or add them);
- the exit status says how it went, as sysexits.h means it: 0 delivered, 75 (EX_TEMPFAIL)
  and 71 (EX_OSERR) deferred, 67 (EX_NOUSER) failed "user unknown", ... (EXITS); another
  status fails; a program killed (by a signal, or at `timeout`) is deferred;
- the first line of what it wrote on its standard error is the reason (the rest, and more
  than LIMIT octets, are read and dropped).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import signal
import subprocess
from collections.abc import Sequence

import trio

from ...config import PipeConfig
from ...queue import policy
from ..transport import Delivery, Outcome, Result, Services, Status, whole_body

# sysexits.h: status -> (what it means for the recipient, RFC 3463 status, text), as Postfix's sys_exits.c.
EXITS: dict[int, tuple[Status, str, str]] = {
    64: ("failed", "5.3.0", "command line usage error"),  # EX_USAGE
    65: ("failed", "5.6.0", "data format error"),  # EX_DATAERR
    66: ("failed", "5.3.0", "cannot open input"),  # EX_NOINPUT
    67: ("failed", "5.1.1", "user unknown"),  # EX_NOUSER
    68: ("failed", "5.1.2", "host name unknown"),  # EX_NOHOST
    69: ("failed", "5.3.0", "service unavailable"),  # EX_UNAVAILABLE
    70: ("failed", "5.3.0", "internal software error"),  # EX_SOFTWARE
    71: ("deferred", "4.3.0", "system resource problem"),  # EX_OSERR
    72: ("failed", "5.3.0", "critical OS file missing"),  # EX_OSFILE
    73: ("failed", "5.2.0", "cannot create user output file"),  # EX_CANTCREAT
    74: ("failed", "5.3.0", "input/output error"),  # EX_IOERR
    75: ("deferred", "4.3.0", "temporary failure"),  # EX_TEMPFAIL
    76: ("failed", "5.5.0", "remote error in protocol"),  # EX_PROTOCOL
    77: ("failed", "5.7.0", "permission denied"),  # EX_NOPERM
    78: ("failed", "5.3.5", "local configuration error"),  # EX_CONFIG
}
LIMIT = 4096  # octets of standard error kept
_PLACEHOLDER = policy.PIPE_PLACEHOLDER  # which ones exist is checked at load (policy.check_command)


def arguments(command: Sequence[str], *, sender: str, recipients: Sequence[str], queue_id: str, config_delimiter: str) -> list[str]:
    """The program's argv: each placeholder replaced; an argument with a recipient's
    placeholder in it repeated for each recipient (as Postfix's pipe does)."""
    argv: list[str] = []
    per_recipient = {"recipient", "user", "extension", "domain", "mailbox", "nexthop"}
    for argument in command:
        names = set(_PLACEHOLDER.findall(argument))
        for recipient in recipients if names & per_recipient else recipients[:1]:
            mailbox, _, domain = recipient.rpartition("@")
            user, extension = policy.split_extension(mailbox.lower(), config_delimiter)
            values = {
                "sender": sender,
                "recipient": recipient,
                "user": user,
                "extension": extension,
                "domain": domain.lower(),
                "mailbox": mailbox,
                "queue_id": queue_id,
                "nexthop": domain.lower(),
            }
            argv.append(_PLACEHOLDER.sub(functools.partial(_value, values), argument))
    return argv


def _value(values: dict[str, str], match: re.Match[str]) -> str:
    return values[match.group(1)]


class Pipe:
    kind = "pipe"
    concurrent = True
    max_recipients = 0  # cut by each pipe's own `recipients`

    def __init__(self, services: Services) -> None:
        self.services = services
        self.limit = trio.CapacityLimiter(max(1, services.config.delivery.workers))  # programs at once

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Result]:
        return [await self._one(d) for d in deliveries]

    async def _one(self, delivery: Delivery) -> Result:
        route = delivery.route
        assert isinstance(route, policy.PipeRoute)
        pipe = self.services.config.delivery.pipe.get(route.name)
        if pipe is None:  # removed by a reload since the route was chosen
            return Result.all(delivery, "deferred", f"no [delivery.pipe.{route.name}] is configured", enhanced="4.3.5", stage="route")
        body = await whole_body(self.services.journal, delivery)
        if isinstance(body, Result):
            return body
        recipients = [a for a, _ in delivery.recipients]
        outcomes: list[Outcome] = []
        for start in range(0, len(recipients), pipe.recipients):
            batch = recipients[start : start + pipe.recipients]
            async with self.limit:
                outcomes += await self._run(pipe, route.name, delivery, batch, body)
        return Result(outcomes)

    async def _run(self, pipe: PipeConfig, name: str, delivery: Delivery, recipients: list[str], body: bytes) -> list[Outcome]:
        job = delivery.job
        argv = arguments(
            pipe.command,
            sender=job.reverse_path,
            recipients=recipients,
            queue_id=job.queue_id,
            config_delimiter=self.services.config.local.recipient_delimiter,
        )
        head = f"Return-Path: <{job.reverse_path}>\nDelivered-To: {recipients[0]}\n".encode()
        data = head + body.replace(b"\r\n", b"\n")
        host, program = f"pipe:{name}", argv[0]

        def every(status: Status, text: str, enhanced: str, detail: str = "") -> list[Outcome]:
            return [
                Outcome(
                    recipient=r, status=status, text=text, enhanced=enhanced, host=host, address=program, stage="program", detail=detail
                )
                for r in recipients
            ]

        try:
            user, group = _identity(pipe)
        except KeyError as exc:
            return every("deferred", f"pipe {name}: no such user or group {exc}", "4.3.5")
        errors = bytearray()
        try:
            process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=_environment(user, job.reverse_path, recipients[0]),
                cwd="/",
                start_new_session=True,
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
            )
        except OSError as exc:
            return every("deferred", f"cannot run {argv[0]}: {exc.strerror}", "4.3.0")
        timed_out = False
        try:
            with trio.move_on_after(pipe.timeout) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_feed, process, data)
                    nursery.start_soon(_collect, process, errors)
                await process.wait()
            timed_out = scope.cancelled_caught
        finally:
            if process.returncode is None:
                _kill(process)
                with trio.CancelScope(shield=True):
                    await process.wait()
        said = errors.split(b"\n", 1)[0].decode("utf-8", "replace").strip()[:500]
        status = process.returncode
        if timed_out or status is None:
            return every("deferred", f"{argv[0]}: killed after {pipe.timeout:g} seconds", "4.3.0")
        if status == 0:
            return every("delivered", said or "delivered", "2.0.0", detail=f"{host} ({program})")
        if status < 0:
            return every("deferred", f"{argv[0]} died with signal {-status}{': ' + said if said else ''}", "4.3.0")
        kind, enhanced, meaning = EXITS.get(status, ("failed", "5.3.0", f"exit status {status}"))
        return every(kind, f"{said or meaning} ({argv[0]} exited with {status})", enhanced)


def _identity(pipe: PipeConfig) -> tuple[int | None, int | str | None]:
    """The user and group the program runs as (only root may change them); KeyError for a
    user this system does not have."""
    if os.geteuid() != 0 or not pipe.user:
        return None, None
    entry = pwd.getpwnam(pipe.user)
    return entry.pw_uid, pipe.group or entry.pw_gid


def _environment(uid: int | None, sender: str, recipient: str) -> dict[str, str]:
    """A small, known environment (Postfix's pipe gives the same kind)."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C", "SENDER": sender, "RECIPIENT": recipient}
    if uid is not None:
        entry = pwd.getpwuid(uid)
        env |= {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}
    return env


async def _feed(process: trio.Process, data: bytes) -> None:
    assert process.stdin is not None
    async with process.stdin:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):  # it stopped reading: its exit status says why
            await process.stdin.send_all(data)


async def _collect(process: trio.Process, errors: bytearray) -> None:
    assert process.stderr is not None
    async with process.stderr:
        while chunk := await process.stderr.receive_some(4096):
            if len(errors) < LIMIT:
                errors += chunk[: LIMIT - len(errors)]


def _kill(process: trio.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the program and what it started
