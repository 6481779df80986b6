"""The pipe transport with real programs: the argv built from placeholders, the user it runs
as, the exit status read as sysexits.h means it (75 deferred, 67 bounced with the program's
own reason), a program that runs too long killed and deferred."""

from __future__ import annotations

import email
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vsmtp.config import Config, PipeConfig
from vsmtp.delivery.transports.pipe import arguments
from vsmtp.queue import events as qe

from ..conftest import maildir_files, sendmail, wait_journal, with_changes

MESSAGE = b"From: s@localhost\r\nSubject: piped\r\n\r\nline one\r\n.dot line\r\n"

RECORD = """#!/bin/sh
out="$1"; shift
id -u > "$out/uid"
printf '%s\\n' "$@" > "$out/argv"
cat > "$out/message"
"""


@pytest.fixture
def scripts() -> Iterator[Path]:
    """A directory anyone may read (the programs run as nobody), with a writable out/."""
    root = Path(tempfile.mkdtemp(prefix="vsmtp-pipe-", dir="/tmp"))
    root.chmod(0o755)
    (root / "out").mkdir(mode=0o777)
    (root / "out").chmod(0o777)
    (root / "record").write_text(RECORD)
    (root / "tempfail").write_text("#!/bin/sh\ncat >/dev/null\necho 'mailbox locked, try later' >&2\nexit 75\n")
    (root / "nouser").write_text("#!/bin/sh\necho 'no such mailbox here' >&2\nexit 67\n")
    (root / "slow").write_text("#!/bin/sh\nsleep 30\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def piped(config: Config, scripts: Path, **pipes: PipeConfig) -> Config:
    return with_changes(
        config,
        local={"recipient_delimiter": "+"},
        delivery={"pipe": pipes, "mailboxes": {name: f"pipe:{name}" for name in pipes}},
    )


def test_arguments_repeat_a_recipient_argument_for_each_recipient() -> None:
    argv = arguments(
        ["/bin/prog", "-f", "${sender}", "--to=${recipient}", "${queue_id}"],
        sender="s@x",
        recipients=["a+b@Y.org", "c@y.org"],
        queue_id="Q",
        config_delimiter="+",
    )
    assert argv == ["/bin/prog", "-f", "s@x", "--to=a+b@Y.org", "--to=c@y.org", "Q"]


async def test_a_program_gets_the_message_and_its_arguments_as_its_user(start_server: Any, config: Config, scripts: Path) -> None:
    user = "nobody" if os.geteuid() == 0 else ""
    record = PipeConfig(
        command=("/bin/sh", str(scripts / "record"), str(scripts / "out"), "${user}", "${extension}", "${sender}", "${queue_id}"),
        user=user,
    )
    running = await start_server(piped(config, scripts, record=record))
    assert await sendmail(running, "s@localhost", ["record+lists@localhost"], MESSAGE) == {}
    records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliverySucceeded.TAG for r in rs), timeout=20)
    [done] = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliverySucceeded)]
    assert done.transport == "pipe" and done.detail.startswith("pipe:record")
    out = scripts / "out"
    expected_uid = pwd.getpwnam("nobody").pw_uid if user else os.geteuid()
    assert int((out / "uid").read_text()) == expected_uid
    assert (out / "argv").read_text().splitlines() == ["record", "lists", "s@localhost", done.queue_id]
    message = (out / "message").read_bytes()
    assert b"\r\n" not in message  # LF line ends, as Postfix's pipe gives them
    assert message.startswith(b"Return-Path: <s@localhost>\nDelivered-To: record+lists@localhost\nReceived: ")
    assert message.endswith(b"Subject: piped\n\nline one\n.dot line\n")


async def test_exit_75_defers_and_67_fails_with_the_programs_reason(start_server: Any, config: Config, scripts: Path) -> None:
    tempfail = PipeConfig(command=("/bin/sh", str(scripts / "tempfail")))
    nouser = PipeConfig(command=("/bin/sh", str(scripts / "nouser")))
    running = await start_server(piped(config, scripts, tempfail=tempfail, nouser=nouser))
    assert await sendmail(running, "sender@localhost", ["tempfail@localhost", "nouser@localhost"], MESSAGE) == {}
    tags = (qe.DeliveryDeferred.TAG, qe.DeliveryFailed.TAG)
    records = await wait_journal(running, lambda rs: all(any(r.tag == t for r in rs) for t in tags), timeout=20)
    events = list(map(qe.decode, records))
    [deferred] = [e for e in events if isinstance(e, qe.DeliveryDeferred)]
    assert deferred.recipient == "tempfail@localhost" and deferred.status == "4.3.0" and deferred.stage == "program"
    assert "mailbox locked, try later" in deferred.reason and "exited with 75" in deferred.reason
    [failed] = [e for e in events if isinstance(e, qe.DeliveryFailed)]
    assert failed.recipient == "nouser@localhost" and failed.status == "5.1.1"
    assert "no such mailbox here" in failed.reason


async def test_a_bounce_names_the_programs_reason(start_server: Any, config: Config, scripts: Path) -> None:
    nouser = PipeConfig(command=("/bin/sh", str(scripts / "nouser")))
    configured = piped(config, scripts, nouser=nouser)
    running = await start_server(configured)
    assert await sendmail(running, "sender@localhost", ["nouser@localhost"], MESSAGE) == {}
    await wait_journal(running, lambda rs: sum(r.tag == qe.DeliverySucceeded.TAG for r in rs) >= 1, timeout=20)
    [path] = maildir_files(configured, "sender")
    notice = email.message_from_bytes(path.read_bytes())
    status = next(p for p in notice.walk() if p.get_content_type() == "message/delivery-status").as_string()
    assert "Status: 5.1.1" in status and "no such mailbox here" in status


async def test_a_program_that_runs_too_long_is_killed_and_deferred(start_server: Any, config: Config, scripts: Path) -> None:
    slow = PipeConfig(command=("/bin/sh", str(scripts / "slow")), timeout=0.5)
    running = await start_server(piped(config, scripts, slow=slow))
    assert await sendmail(running, "s@localhost", ["slow@localhost"], MESSAGE) == {}
    records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliveryDeferred.TAG for r in rs), timeout=20)
    [deferred] = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliveryDeferred)]
    assert "killed after 0.5 seconds" in deferred.reason
