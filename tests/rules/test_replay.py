"""`vsmtp rules test`: recorded sessions replayed through a rules file, over a journal
filled by real SMTP sessions."""

from __future__ import annotations

import dataclasses
import json
import smtplib
import textwrap
from pathlib import Path
from typing import Any

import trio

from vsmtp.config import Config, JournalConfig

from ..conftest import wait_journal
from ..daemon import run_cli
from .test_stages import session

RECORDED = """
from vsmtp.rules import *


@rule.rcpt
def no_carol(ctx):
    if ctx.recipient.startswith("carol@"):
        return reject("550 5.7.1 no mail for carol")


@rule.data
def spam(ctx):
    if "spam" in (ctx.message.header("Subject") or ""):
        return quarantine("spam")
"""

CHANGED = """
from vsmtp.rules import *


@rule.data
def hello(ctx):
    if ctx.message.header("Subject") == "hello" and ctx.client.address in Networks("127.0.0.0/8"):
        return quarantine("spam")
"""


async def test_rules_test_shows_changed_verdicts_and_none_for_the_same_file(start_server: Any, config: Config, tmp_path: Path) -> None:
    (tmp_path / "recorded.py").write_text(textwrap.dedent(RECORDED))
    (tmp_path / "changed.py").write_text(textwrap.dedent(CHANGED))
    changed = dataclasses.replace(
        config, rules=str(tmp_path / "recorded.py"), journal=JournalConfig(path=str(tmp_path / "var" / "journal"))
    )
    running = await start_server(changed)

    def first(client: smtplib.SMTP) -> Any:
        return client.sendmail("a@example.org", ["bob@localhost", "carol@localhost"], "Subject: hello\r\n\r\nx\r\n")

    assert await session(running, first) == {"carol@localhost": (550, b"5.7.1 no mail for carol")}
    await session(running, lambda c: c.sendmail("a@example.org", ["bob@localhost"], "Subject: spam\r\n\r\nx\r\n"))
    await wait_journal(running, lambda rs: sum(r.tag == "session.closed" for r in rs) == 2)
    queue_ids = [r.payload["queue_id"] for r in running.journal.read(0) if r.tag == "message.accepted"]

    def cli(*args: str) -> Any:
        return trio.to_thread.run_sync(lambda: run_cli(tmp_path, "rules", "test", *args))

    same = await cli("recorded.py")
    assert same.returncode == 0, same.stderr
    assert same.stdout.splitlines() == ["2 sessions replayed (5 stage runs): 0 verdicts differ"]

    other = await cli("changed.py", "--json")
    assert other.returncode == 0, other.stderr
    report = json.loads(other.stdout)
    found = {(d["queue_id"], d["stage"], d["recipient"], d["recorded"], d["replayed"]) for d in report["differences"]}
    assert found == {
        (queue_ids[0], "rcpt", "carol@localhost", "reject 550 5.7.1 no mail for carol", "next"),
        (queue_ids[0], "data", "", "next", "quarantine spam"),
        (queue_ids[1], "data", "", "quarantine spam", "next"),
    }
    text = await cli("changed.py")
    assert f"message {queue_ids[0]}: rcpt <carol@localhost>: reject 550 5.7.1 no mail for carol -> next" in text.stdout

    later = await cli("changed.py", "--since", "2100-01-01T00:00:00Z")
    assert later.stdout.startswith("0 sessions replayed")
    broken = tmp_path / "broken.py"
    broken.write_text("from vsmtp.rules import *\n@rule.data\ndef f(ctx)\n")
    out = await cli("broken.py")
    assert out.returncode == 1 and "broken.py:3:" in out.stderr
    running.cancel_scope.cancel()
