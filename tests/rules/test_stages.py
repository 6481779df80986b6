"""Rules and plugins over real SMTP: a verdict at each stage, actions on the delivered
message, quarantine and release, a plugin that raises."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import smtplib
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

import vsmtp
from vsmtp.config import Config
from vsmtp.plugins import PluginManager
from vsmtp.queue import inspect as queue_inspect
from vsmtp.rules import RulesError, RulesFile, deny

from ..conftest import maildir_files, port_of, wait_delivered, wait_journal, with_changes


def rules_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.py"
    path.write_text("from vsmtp.rules import *\n" + textwrap.dedent(text))
    return str(path)


def session(running: Any, script: Any) -> Any:
    """Run `script(client)` with an smtplib client in a thread."""

    def run() -> Any:
        with smtplib.SMTP("127.0.0.1", port_of(running), timeout=10) as client:
            return script(client)

    return trio.to_thread.run_sync(run)


def transaction(
    client: smtplib.SMTP, sender: str = "a@example.org", rcpt: str = "bob@localhost", body: str = "Subject: t\r\n\r\nx\r\n"
) -> list[tuple[int, bytes]]:
    """EHLO, MAIL, RCPT, DATA, stopping at the first refusal; every reply."""
    replies = [client.ehlo("client.test")]
    for step in (lambda: client.mail(sender), lambda: client.rcpt(rcpt), lambda: client.data(body)):
        if replies[-1][0] >= 400:
            break
        replies.append(step())
    return replies


def with_exe(subject: str = "with parts", *, notes: bool = True, **headers: str) -> bytes:
    """A message with a text body, a tool.exe attachment and (with `notes`) a notes.txt one."""
    from email.message import EmailMessage

    message = EmailMessage()
    message["Subject"] = subject
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("hello\n")
    message.add_attachment(b"MZ...", maintype="application", subtype="octet-stream", filename="tool.exe")
    if notes:
        message.add_attachment("notes\n", filename="notes.txt")
    return message.as_bytes(policy=email.policy.SMTP)


STAGE_OF_REPLY = {"helo": 0, "mail": 1, "rcpt": 2, "data": 3}


@pytest.mark.parametrize("stage", ["helo", "mail", "rcpt", "data"])
async def test_a_deny_rule_at_each_stage(start_server: Any, config: Config, tmp_path: Path, stage: str) -> None:
    rules = rules_file(
        tmp_path,
        f"""
        @rule.{stage}
        def no_{stage}(ctx):
            if ctx.client.address in Networks("127.0.0.0/8"):
                return deny("550 5.7.1 denied at {stage}")
        """,
    )
    running = await start_server(dataclasses.replace(config, rules=rules))
    replies = await session(running, transaction)
    assert replies[STAGE_OF_REPLY[stage]] == (550, f"5.7.1 denied at {stage}".encode())
    records = await wait_journal(running, lambda rs: any(r.tag == "rule.verdict" for r in rs))
    [verdict] = [r for r in records if r.tag == "rule.verdict"]
    assert verdict.payload["by"] == f"rules:no_{stage}" and verdict.payload["verdict"] == "deny" and verdict.payload["stage"] == stage
    assert running.projection.state.accepted == 0
    running.cancel_scope.cancel()


async def test_a_deny_rule_at_connect_answers_instead_of_the_greeting(start_server: Any, config: Config, tmp_path: Path) -> None:
    rules = rules_file(
        tmp_path,
        """
        blocked = Networks("127.0.0.0/8", "::1/128")

        @rule.connect
        def blocklist(ctx):
            if ctx.client.address in blocked:
                return deny("554 5.7.1 your network is blocked")
        """,
    )
    running = await start_server(dataclasses.replace(config, rules=rules))

    def connect() -> None:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", port_of(running), timeout=10)
        assert refused.value.smtp_code == 554 and b"blocked" in refused.value.smtp_error

    await trio.to_thread.run_sync(connect)
    running.cancel_scope.cancel()


@pytest.mark.parametrize("stage", ["connect", "helo", "mail", "rcpt", "data", "postq", "delivery"])  # auth: tests/net/test_auth.py
async def test_an_accept_rule_at_each_stage(start_server: Any, config: Config, tmp_path: Path, stage: str) -> None:
    rules = rules_file(
        tmp_path,
        f"""
        @rule.{stage}
        def yes(ctx):
            return accept()

        @rule.{stage}
        def never_reached(ctx):
            return deny()
        """,
    )
    running = await start_server(dataclasses.replace(config, rules=rules))
    replies = await session(running, transaction)
    assert [code for code, _ in replies] == [250, 250, 250, 250]
    await wait_delivered(running, 1)
    verdicts = [r.payload for r in running.journal.read(0) if r.tag == "rule.verdict"]
    assert [(v["stage"], v["by"], v["verdict"]) for v in verdicts] == [(stage, "rules:yes", "accept")]
    running.cancel_scope.cancel()


async def test_accept_at_rcpt_settles_the_relay_check_and_reject_refuses_one_recipient(
    start_server: Any, config: Config, tmp_path: Path
) -> None:
    rules = rules_file(
        tmp_path,
        """
        partners = Domains("partner.example", subdomains=True)

        @rule.rcpt
        def relay_for_partners(ctx):
            if ctx.recipient in partners:
                return accept()

        @rule.rcpt
        def no_postmaster(ctx, ):
            if ctx.recipient.startswith("nobody@"):
                return reject()
        """,
    )
    running = await start_server(with_changes(config, rules=rules, relay={"networks": ()}, delivery={"enabled": False}))

    def script(client: smtplib.SMTP) -> list[int]:
        client.ehlo("c")
        client.mail("a@example.org")
        return [client.rcpt(r)[0] for r in ("x@mx.partner.example", "x@elsewhere.example", "nobody@localhost", "bob@localhost")]

    assert await session(running, script) == [250, 554, 550, 250]  # 554: vsmtp's own relay check
    running.cancel_scope.cancel()


async def test_data_rules_add_a_header_and_remove_an_attachment(start_server: Any, config: Config, tmp_path: Path) -> None:
    rules = rules_file(
        tmp_path,
        """
        @rule.data
        def stamp(ctx):
            ctx.add_header("X-Scanned", "by the rules")
            ctx.remove_header("X-Secret")

        @rule.data
        def no_executables(ctx):
            removed = ctx.message.remove_attachments(lambda part: (part.get_filename() or "").endswith(".exe"))
            if removed:
                ctx.set_header("X-Removed", str(removed))
        """,
    )
    message = with_exe(X_Secret="hush")
    running = await start_server(dataclasses.replace(config, rules=rules))
    await session(running, lambda c: c.sendmail("a@example.org", ["bob@localhost"], message))
    await wait_delivered(running, 1)
    [path] = maildir_files(config, "bob")
    delivered = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert delivered["X-Scanned"] == "by the rules" and delivered["X-Secret"] is None and delivered["X-Removed"] == "1"
    assert [p.get_filename() for p in delivered.iter_attachments()] == ["notes.txt"]
    actions = [r.payload for r in running.journal.read(0) if r.tag == "rule.action"]
    assert [(a["by"], a["action"]) for a in actions] == [
        ("rules:stamp", "add_header"),
        ("rules:stamp", "remove_header"),
        ("rules:no_executables", "remove_attachments"),  # a part edit, journaled as any action
        ("rules:no_executables", "set_header"),
    ]
    running.cancel_scope.cancel()


async def test_data_and_postq_rules_export_the_message(start_server: Any, config: Config, tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    rules = rules_file(
        tmp_path,
        f"""
        @rule.data
        def keep_a_copy(ctx):
            ctx.export({str(exports)!r})

        @rule.postq
        def defang(ctx):
            ctx.message.replace_parts(lambda part: (part.get_filename() or "").endswith(".exe"), "tool.exe was removed\\n")
            ctx.export({str(exports)!r}, "json")
        """,
    )
    message = with_exe("export me", notes=False)
    running = await start_server(dataclasses.replace(config, rules=rules))
    await session(running, lambda c: c.sendmail("a@example.org", ["bob@localhost"], message))
    await wait_delivered(running, 1)
    accepted = next(r.payload for r in running.journal.read(0) if r.tag == "message.accepted")
    queue_id = accepted["queue_id"]
    assert sorted(p.name for p in exports.iterdir()) == [f"{queue_id}.data.eml", f"{queue_id}.postq.json"]  # no temporary left
    as_queued = (exports / f"{queue_id}.data.eml").read_bytes()
    assert as_queued == running.journal.blob(accepted["blob"])  # the message as queued, our Received first
    assert (exports / f"{queue_id}.data.eml").stat().st_mode & 0o777 == 0o600
    after = json.loads((exports / f"{queue_id}.postq.json").read_text())
    assert after["envelope"]["queue_id"] == queue_id and after["envelope"]["recipients"] == ["bob@localhost"]
    assert ["Subject", "export me"] in after["headers"] and after["text"] == "hello\n"
    # The .exe is gone; the note in its place is a part beside the body (the stdlib lists it as an attachment).
    assert [(a["type"], a["name"], a["size"]) for a in after["attachments"]] == [
        ("text/plain", None, len("tool.exe was removed\r\n"))
    ]  # stored with CRLF
    [path] = maildir_files(config, "bob")
    delivered = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    parts = [
        (p.get_content_type(), p.get_content_disposition(), p.get_content().replace("\r\n", "\n"))
        for p in delivered.walk()
        if not p.is_multipart()
    ]
    assert parts == [("text/plain", None, "hello\n"), ("text/plain", "inline", "tool.exe was removed\n")]
    actions = [(r.payload["stage"], r.payload["action"], r.payload["args"]) for r in running.journal.read(0) if r.tag == "rule.action"]
    assert actions == [
        ("data", "export", [str(exports), "eml"]),
        ("postq", "replace_parts", ["tool.exe"]),
        ("postq", "export", [str(exports), "json"]),
    ]
    running.cancel_scope.cancel()


async def test_an_export_that_cannot_be_written_does_not_lose_the_message(
    start_server: Any, config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    rules = rules_file(tmp_path, f"@rule.data\ndef keep(ctx):\n    ctx.export({str(tmp_path / 'a-file')!r})\n")
    running = await start_server(dataclasses.replace(config, rules=rules))
    assert await session(running, lambda c: c.sendmail("a@example.org", ["bob@localhost"], "Subject: x\r\n\r\nx\r\n")) == {}
    await wait_delivered(running, 1)
    assert len(maildir_files(config, "bob")) == 1
    assert "export by rules:keep to" in caplog.text and "failed" in caplog.text
    running.cancel_scope.cancel()


def test_export_is_for_the_stages_with_a_message() -> None:
    from vsmtp.rules import Context
    from vsmtp.rules.context import endpoint

    ctx = Context(
        session_id="S",
        client=endpoint("127.0.0.1", 1),
        server=endpoint("127.0.0.1", 2),
        listener="mx",
        role="mx",
        local_domains=frozenset(),
    )
    ctx.stage = "rcpt"
    with pytest.raises(ValueError, match="at data and postq"):
        ctx.export("/tmp/x")
    ctx.stage = "data"
    with pytest.raises(ValueError, match="eml or json"):
        ctx.export("/tmp/x", "pdf")


async def test_quarantine_keeps_the_message_until_released(start_server: Any, config: Config, tmp_path: Path) -> None:
    rules = rules_file(
        tmp_path,
        """
        @rule.data
        def suspicious(ctx):
            if "quarantine me" in (ctx.message.header("Subject") or ""):
                return quarantine("suspicious")
        """,
    )
    running = await start_server(dataclasses.replace(config, rules=rules))
    await session(running, lambda c: c.sendmail("a@example.org", ["bob@localhost"], "Subject: quarantine me\r\n\r\nx\r\n"))
    await session(running, lambda c: c.sendmail("a@example.org", ["bob@localhost"], "Subject: fine\r\n\r\nx\r\n"))
    await wait_delivered(running, 1)
    [kept] = running.projection.state.messages.values()
    assert kept.quarantine == "suspicious" and kept.held and len(maildir_files(config, "bob")) == 1
    queue_inspect.act(running.journal, "release", kept.queue_id)
    await wait_delivered(running, 2)
    assert len(maildir_files(config, "bob")) == 2
    running.cancel_scope.cancel()


async def test_a_plugin_that_raises_answers_451_and_the_next_session_is_served(
    start_server: Any, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    class Flaky:
        calls = 0

        @vsmtp.hookimpl
        def vsmtp_rcpt(self, recipient: str) -> Any:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("the plugin's database is down")
            return None

    plugins = PluginManager()
    plugins.register(Flaky(), "flaky")
    running = await start_server(config, plugins=plugins)
    first = await session(running, transaction)
    assert first[2][0] == 451 and first[2][1].startswith(b"4.3.0")
    assert [code for code, _ in await session(running, transaction)] == [250, 250, 250, 250]
    assert any("flaky raised at the rcpt stage" in r.getMessage() for r in caplog.records)
    [verdict] = [r.payload for r in running.journal.read(0) if r.tag == "rule.verdict"]
    assert verdict["by"] == "flaky" and verdict["verdict"] == "error"
    running.cancel_scope.cancel()


def test_a_broken_rules_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.py"
    path.write_text("from vsmtp.rules import *\n\n@rule.rcpt\ndef f(ctx)\n    return None\n")
    with pytest.raises(RulesError, match=rf"^{path}:4: "):
        RulesFile.load(path)
    path.write_text("from vsmtp.rules import *\nx = 1\nNetworks('not a network')\n")
    with pytest.raises(RulesError, match=rf"^{path}:3: ValueError"):
        RulesFile.load(path)
    with pytest.raises(ValueError, match="not a refusal"):
        deny("250 ok")


async def test_scenarios_bcc_aliases_and_header_rewriting(start_server: Any, config: Config, tmp_path: Path) -> None:
    (tmp_path / "aliases.csv").write_text("# alias,target\npostmaster@localhost,bob@localhost\n")
    rules = rules_file(
        tmp_path,
        f"""
        aliases = FileMap({str(tmp_path / "aliases.csv")!r})

        @rule.rcpt
        def expand_aliases(ctx):
            target = aliases.get(ctx.recipient)
            if target:
                ctx.rewrite_recipient(ctx.recipient, target)
                return accept()  # the alias itself is no mailbox: settled here

        @rule.data
        def archive_alice(ctx):
            if "alice@localhost" in ctx.recipients:
                ctx.add_recipient("archive@localhost")

        @rule.data
        def tidy_subject(ctx):
            subject = ctx.message.header("Subject") or ""
            if subject.startswith("[EXTERNAL] "):
                ctx.set_header("Subject", subject.removeprefix("[EXTERNAL] "))
        """,
    )
    running = await start_server(dataclasses.replace(config, rules=rules))
    await session(running, lambda c: c.sendmail("a@example.org", ["postmaster@localhost"], "Subject: [EXTERNAL] hi\r\n\r\nx\r\n"))
    await session(running, lambda c: c.sendmail("a@example.org", ["alice@localhost"], "Subject: for alice\r\n\r\nx\r\n"))
    await wait_delivered(running, 2)
    [to_bob] = maildir_files(config, "bob")
    assert b"\r\nSubject: hi\r\n" in to_bob.read_bytes() and b"Delivered-To: bob@localhost" in to_bob.read_bytes()
    assert len(maildir_files(config, "alice")) == 1 and len(maildir_files(config, "archive")) == 1  # the BCC
    assert b"archive@localhost" not in maildir_files(config, "alice")[0].read_bytes()  # a BCC stays blind
    running.cancel_scope.cancel()


async def test_the_first_rules_file_of_the_docs_works_over_smtp(start_server: Any, config: Config, tmp_path: Path) -> None:
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "rules.md").read_text()
    first = re.search(r"## A first rules file\n\n```python\n(.*?)```", text, re.DOTALL)
    assert first is not None
    path = tmp_path / "rules.py"
    path.write_text(first.group(1))
    running = await start_server(with_changes(config, rules=str(path), relay={"networks": ()}))

    def script(client: smtplib.SMTP) -> list[int]:
        client.ehlo("c")
        client.mail("a@example.org")
        codes = [client.rcpt(r)[0] for r in ("x@mx.partner.example", "noreply@localhost", "x@else.example", "bob@localhost")]
        return [*codes, client.data("Subject: cheap Viagra\r\n\r\nx\r\n")[0]]

    assert await session(running, script) == [250, 550, 554, 250, 250]
    await session(running, lambda c: c.sendmail("a@example.org", ["bob@localhost"], "Subject: hello\r\n\r\nx\r\n"))
    await wait_journal(running, lambda rs: sum(r.tag == "delivery.succeeded" for r in rs) >= 1)
    [spam] = [m for m in running.projection.state.messages.values() if m.quarantine]
    assert spam.quarantine == "spam"
    with trio.fail_after(10):
        while not maildir_files(config, "bob"):
            await trio.sleep(0.02)
    assert b"X-Checked-By: vsmtp rules" in maildir_files(config, "bob")[0].read_bytes()
    running.cancel_scope.cancel()
