"""The command plugin over real SMTP, running real programs (shell scripts)."""

from __future__ import annotations

import dataclasses
import smtplib
from pathlib import Path
from typing import Any

import pytest

from vsmtp.config import Config
from vsmtp.errors import PluginError

from ..conftest import has_tag, maildir_files, wait_delivered, wait_journal
from ..rules.test_stages import session

SCAN = """#!/bin/sh
# A virus scanner's stand-in: refuses what carries the test signature, reports the rest.
if grep -q 'EICAR-TEST' ; then
    echo "550 5.7.1 virus found: EICAR-TEST ($VSMTP_SENDER)"
    exit 1
fi
echo "clean, seen from $VSMTP_CLIENT_ADDRESS for $VSMTP_RECIPIENTS"
exit 0
"""


def command_config(config: Config, tmp_path: Path, script: str, **table: Any) -> Config:
    program = tmp_path / "scan.sh"
    program.write_text(script)
    program.chmod(0o755)
    section = {"scan": {"stage": "data", "argv": [str(program)], "header": "X-Scan", **table}}
    return dataclasses.replace(config, plugins=("command",), plugin={"command": section})


def send(body: str) -> Any:
    def script(client: smtplib.SMTP) -> tuple[int, bytes]:
        client.ehlo("c")
        client.mail("a@example.org")
        client.rcpt("bob@localhost")
        return client.data(body)

    return script


async def test_a_program_adds_a_header_or_refuses_the_message(start_server: Any, config: Config, tmp_path: Path) -> None:
    running = await start_server(command_config(config, tmp_path, SCAN))
    code, text = await session(running, send("Subject: bad\r\n\r\nX5O EICAR-TEST body\r\n"))
    assert (code, text) == (550, b"5.7.1 virus found: EICAR-TEST (a@example.org)")
    assert (await session(running, send("Subject: good\r\n\r\nhello\r\n")))[0] == 250
    await wait_delivered(running, 1)
    [delivered] = maildir_files(config, "bob")
    assert b"X-Scan: clean, seen from 127.0.0.1 for bob@localhost\r\n" in delivered.read_bytes()
    records = await wait_journal(running, has_tag("rule.action"))
    [action] = [r.payload for r in records if r.tag == "rule.action"]
    assert action["by"] == "command" and action["args"] == ["X-Scan", "clean, seen from 127.0.0.1 for bob@localhost"]
    running.cancel_scope.cancel()


async def test_exit_statuses_map_to_verdicts(start_server: Any, config: Config, tmp_path: Path) -> None:
    running = await start_server(command_config(config, tmp_path, "#!/bin/sh\ncat >/dev/null\nexit 75\n", header=""))
    assert await session(running, send("Subject: x\r\n\r\nx\r\n")) == (451, b"4.7.1 scan: try again later")
    running.cancel_scope.cancel()
    quarantined = command_config(config, tmp_path, "#!/bin/sh\nexit 3\n", exit={"3": "quarantine:suspect"})
    running = await start_server(dataclasses.replace(quarantined, journal=dataclasses.replace(config.journal, path=str(tmp_path / "j2"))))
    assert (await session(running, send("Subject: x\r\n\r\nx\r\n")))[0] == 250
    records = await wait_journal(running, has_tag("message.quarantined"))
    assert [r.payload["queue"] for r in records if r.tag == "message.quarantined"] == ["suspect"]
    running.cancel_scope.cancel()


async def test_a_program_too_slow_or_failing_answers_451(start_server: Any, config: Config, tmp_path: Path, caplog: Any) -> None:
    running = await start_server(command_config(config, tmp_path, "#!/bin/sh\nsleep 30\n", timeout=0.5))
    assert await session(running, send("Subject: x\r\n\r\nx\r\n")) == (451, b"4.3.0 Temporary local problem, try again later")
    assert any("command raised at the data stage" in r.getMessage() for r in caplog.records)
    running.cancel_scope.cancel()


def test_a_bad_command_section_names_its_key(config: Config, tmp_path: Path) -> None:
    from vsmtp.plugins import PluginManager

    for table, message in (
        ({"stage": "queue"}, r"scan.stage: 'queue' is not one of"),
        ({"exit": {"2": "maybe"}}, r"scan.exit: 'maybe' is not a verdict"),
        ({"timeout": 0}, r"scan.timeout"),
        ({"reply": "250 fine"}, r"not a refusal reply"),
    ):
        changed = command_config(config, tmp_path, SCAN, **table)
        with pytest.raises(PluginError, match=message):
            PluginManager().load(changed.plugins, changed.plugin)
