"""vSMTP's example scenarios in our rules language, over real SMTP: greylisting with a CSV
file (the files plugin), anti-relaying per domain. (BCC, aliases, header rewriting and a
blocklist by IP range are in test_stages.py.)"""

from __future__ import annotations

import dataclasses
import smtplib
from pathlib import Path
from typing import Any

import pytest
import trio

from vsmtp.config import Config
from vsmtp.errors import PluginError

from ..conftest import has_tag, maildir_files, wait_delivered, wait_journal, with_changes
from .test_stages import rules_file, session

GREYLISTING = """
import time
import vsmtp_files

greylist = vsmtp_files.database("greylist")
DELAY = 1.0  # seconds a new (client, sender, recipient) waits; 300 in production


@rule.rcpt
def greylisting(ctx):
    if ctx.direction != "incoming":
        return None
    key = f"{ctx.client.address}|{ctx.sender}|{ctx.recipient}"
    first_seen = greylist.get(key)
    if first_seen is None:
        greylist.set(key, str(time.time()))
        return reject("451 4.7.1 greylisted, try again later")
    if time.time() - float(first_seen) < DELAY:
        return reject("451 4.7.1 greylisted, try again later")
    return None
"""


def files_config(config: Config, rules: str, path: Path, **table: Any) -> Config:
    plugin = {"files": {"greylist": {"path": str(path), **table}}}
    return dataclasses.replace(config, rules=rules, plugins=("files",), plugin=plugin)


async def test_greylisting_with_a_csv_file(start_server: Any, config: Config, tmp_path: Path) -> None:
    path = tmp_path / "greylist.csv"
    running = await start_server(files_config(config, rules_file(tmp_path, GREYLISTING), path, writable=True))

    def rcpt(client: smtplib.SMTP) -> int:
        client.ehlo("c")
        client.mail("a@example.org")
        return client.rcpt("bob@localhost")[0]

    assert await session(running, rcpt) == 451  # first time: remembered, refused for now
    assert path.read_text().startswith("127.0.0.1|a@example.org|bob@localhost,")
    assert await session(running, rcpt) == 451  # too soon
    await trio.sleep(1.1)
    await session(running, lambda c: c.sendmail("a@example.org", ["bob@localhost"], "Subject: later\r\n\r\nx\r\n"))
    await wait_delivered(running, 1)
    assert len(maildir_files(config, "bob")) == 1
    assert len(path.read_text().splitlines()) == 1  # one triplet, written once
    running.cancel_scope.cancel()


async def test_a_database_written_to_must_be_writable(start_server: Any, config: Config, tmp_path: Path) -> None:
    running = await start_server(files_config(config, rules_file(tmp_path, GREYLISTING), tmp_path / "g.csv"))

    def rcpt(client: smtplib.SMTP) -> tuple[int, bytes]:
        client.ehlo("c")
        client.mail("a@example.org")
        return client.rcpt("bob@localhost")

    code, _ = await session(running, rcpt)
    assert code == 451  # the rule raised (PermissionError): 451 4.3.0, logged
    records = await wait_journal(running, has_tag("rule.verdict"))
    [verdict] = [r.payload for r in records if r.tag == "rule.verdict"]
    assert verdict["verdict"] == "error" and verdict["by"] == "rules:greylisting"
    running.cancel_scope.cancel()


async def test_a_bad_files_section_is_refused_with_its_key(start_server: Any, config: Config, tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=r"\[plugin.files\]: greylist: unknown key 'writeable'"):
        await start_server(files_config(config, rules_file(tmp_path, GREYLISTING), tmp_path / "g.csv", writeable=True))


ANTI_RELAY = """
office = Networks("10.1.0.0/16")


@rule.rcpt
def office_only(ctx):
    if ctx.direction == "outgoing" and ctx.sender.endswith("@example.com") and ctx.client.address not in office:
        return deny("554 5.7.1 relaying for example.com only from the office")
"""


async def test_anti_relaying_per_domain(start_server: Any, config: Config, tmp_path: Path) -> None:
    # Loopback may relay in general; the rule takes that right away from example.com's users.
    changed = with_changes(
        config,
        rules=rules_file(tmp_path, ANTI_RELAY),
        relay={"networks": ("127.0.0.0/8",)},
        local={"domains": ("localhost", "example.com")},
        delivery={"enabled": False},
    )
    running = await start_server(changed)

    def rcpt(sender: str, recipient: str) -> Any:
        def script(client: smtplib.SMTP) -> int:
            client.ehlo("c")
            client.mail(sender)
            return client.rcpt(recipient)[0]

        return session(running, script)

    assert await rcpt("boss@example.com", "x@elsewhere.example") == 554  # outgoing, not from the office
    assert await rcpt("bob@localhost", "x@elsewhere.example") == 250  # another local domain relays
    assert await rcpt("boss@example.com", "bob@example.com") == 250  # internal
    assert await rcpt("x@elsewhere.example", "boss@example.com") == 250  # incoming
    running.cancel_scope.cancel()
