"""The post-queue stage over real SMTP: rules that run after the 250, edit what is delivered
(message.modified), refuse (a bounce) or quarantine, and a hook that raises (the message
waits and is filtered again)."""

from __future__ import annotations

import dataclasses
import email
import email.policy
from pathlib import Path
from typing import Any

import pytest
import trio

import vsmtp
from vsmtp.config import Config
from vsmtp.delivery import stages
from vsmtp.plugins import PluginManager
from vsmtp.queue import history
from vsmtp.queue import inspect as queue_inspect

from ..conftest import has_tag, maildir_files, wait_delivered, wait_journal
from .test_stages import rules_file, session, with_exe

POSTQ = """
@rule.postq
def stamp(ctx):
    ctx.add_header("X-Postq", f"filtered {ctx.queue_id} from {ctx.client.address} helo {ctx.helo}")


@rule.postq
def no_executables(ctx):
    if ctx.message.remove_attachments(lambda part: (part.get_filename() or "").endswith(".exe")):
        ctx.add_recipient("security@localhost")


@rule.postq
def refuse(ctx):
    subject = ctx.message.header("Subject") or ""
    if subject == "refuse me":
        return deny("550 5.7.1 not after all")
    if subject == "quarantine me":
        return quarantine("later")
"""


async def test_postq_rules_edit_what_is_delivered(start_server: Any, config: Config, tmp_path: Path) -> None:
    running = await start_server(dataclasses.replace(config, rules=rules_file(tmp_path, POSTQ)))
    await session(running, lambda c: c.sendmail("a@example.org", ["bob@localhost"], with_exe()))
    await wait_delivered(running, 1)
    [path] = maildir_files(config, "bob")
    delivered = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    accepted = next(r.payload for r in running.journal.read(0) if r.tag == "message.accepted")
    assert accepted["postq"] is True
    assert delivered["X-Postq"] == f"filtered {accepted['queue_id']} from 127.0.0.1 helo {delivered['Received'].split()[1]}"
    assert [p.get_filename() for p in delivered.iter_attachments()] == ["notes.txt"]
    assert len(maildir_files(config, "security")) == 1  # the recipient a postq rule added
    records = [r for r in running.journal.read(0) if r.tag.startswith(("message.", "rule."))]
    [modified] = [r.payload for r in records if r.tag == "message.modified"]
    assert modified["blob"] == accepted["queue_id"].encode() + b".1" and modified["recipients"] == ["bob@localhost", "security@localhost"]
    assert running.journal.blob(accepted["blob"]).count(b"tool.exe") >= 1  # the body as received is kept
    [filtered] = [r.payload for r in records if r.tag == "message.filtered"]
    assert filtered["verdict"] == "next"
    actions = [(r.payload["by"], r.payload["action"], r.payload["args"]) for r in records if r.tag == "rule.action"]
    assert actions == [
        ("rules:stamp", "add_header", ["X-Postq", delivered["X-Postq"]]),
        ("rules:no_executables", "remove_attachments", ["tool.exe"]),  # part edits are journaled too
        ("rules:no_executables", "add_recipient", ["security@localhost"]),
    ]
    found = history.as_delivered(running.journal, accepted["queue_id"])  # `vsmtp journal export`: the message as delivered
    assert found is not None and found[0].recipients == ("bob@localhost", "security@localhost") and b"tool.exe" not in found[1]
    running.cancel_scope.cancel()


async def test_a_postq_deny_bounces_and_quarantine_holds(start_server: Any, config: Config, tmp_path: Path) -> None:
    running = await start_server(dataclasses.replace(config, rules=rules_file(tmp_path, POSTQ)))
    await session(running, lambda c: c.sendmail("alice@localhost", ["bob@localhost"], "Subject: refuse me\r\n\r\nx\r\n"))
    await session(running, lambda c: c.sendmail("alice@localhost", ["bob@localhost"], "Subject: quarantine me\r\n\r\nx\r\n"))
    records = await wait_journal(running, has_tag("message.bounced"))
    [failed] = [r.payload for r in records if r.tag == "delivery.failed"]
    assert failed["transport"] == "postq" and "550 5.7.1 not after all" in failed["reason"]
    await wait_delivered(running, 2)  # the refused message (bounced), then its bounce, to alice
    assert b"not after all" in maildir_files(config, "alice")[0].read_bytes()
    with trio.fail_after(10):
        while not any(m.quarantine for m in running.projection.state.messages.values()):
            await trio.sleep(0.02)
    [kept] = running.projection.state.messages.values()
    assert kept.quarantine == "later" and kept.held and maildir_files(config, "bob") == []
    running.cancel_scope.cancel()


async def test_a_postq_hook_that_raises_is_run_again(
    start_server: Any, config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stages, "RETRY", 0.2)

    class Flaky:
        calls = 0

        @vsmtp.hookimpl
        def vsmtp_postq(self, ctx: Any) -> None:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("the scanner is down")
            ctx.add_header("X-Scanned", "second try")

    plugins = PluginManager()
    plugins.register(Flaky(), "flaky")
    running = await start_server(config, plugins=plugins)
    await session(running, lambda c: c.sendmail("a@example.org", ["bob@localhost"], "Subject: x\r\n\r\nx\r\n"))
    await wait_delivered(running, 1)
    assert b"X-Scanned: second try" in maildir_files(config, "bob")[0].read_bytes() and Flaky.calls == 2
    verdicts = [r.payload for r in running.journal.read(0) if r.tag == "rule.verdict"]
    assert [(v["stage"], v["by"], v["verdict"]) for v in verdicts] == [("postq", "flaky", "error")]
    running.cancel_scope.cancel()


DELIVERY = """
@rule.delivery
def per_recipient(ctx):
    if ctx.recipient == "carol@localhost":
        return deny("550 5.7.1 carol takes no mail today")
    if ctx.recipient == "bob@localhost":
        return accept()
    if ctx.recipient == "dave@elsewhere.example":
        assert ctx.route == "smtp"
        ctx.set_route(ctx.recipient, "local")  # kept here instead of going out


@rule.postq
def accepted_after_queueing(ctx):
    return accept()
"""


async def test_delivery_rules_refuse_accept_and_route_each_recipient(start_server: Any, config: Config, tmp_path: Path) -> None:
    running = await start_server(
        dataclasses.replace(
            config, rules=rules_file(tmp_path, DELIVERY), relay=dataclasses.replace(config.relay, networks=("127.0.0.0/8",))
        )
    )
    recipients = ["bob@localhost", "carol@localhost", "dave@elsewhere.example"]
    await session(running, lambda c: c.sendmail("alice@localhost", recipients, "Subject: x\r\n\r\nx\r\n"))
    await wait_delivered(running, 2)  # the message, then the bounce for carol
    assert len(maildir_files(config, "bob")) == 1 and len(maildir_files(config, "dave")) == 1
    assert maildir_files(config, "carol") == []
    assert b"carol takes no mail today" in maildir_files(config, "alice")[0].read_bytes()
    verdicts = [
        (r.payload["stage"], r.payload["verdict"], r.payload["recipient"]) for r in running.journal.read(0) if r.tag == "rule.verdict"
    ]
    assert sorted(verdicts) == [("delivery", "accept", "bob@localhost"), ("delivery", "deny", "carol@localhost"), ("postq", "accept", "")]
    running.cancel_scope.cancel()


TRANSPORTS = """
@rule.delivery
def by_transport(ctx):
    routes = {"gone": "discard", "no": "error:we do not take mail for no", "later": "pipe:missing", "box": "mbox"}
    ctx.set_route(ctx.recipient, routes[ctx.recipient.split("@")[0]])
"""


async def test_delivery_rules_choose_transports(start_server: Any, config: Config, tmp_path: Path) -> None:
    from vsmtp.queue import events as qe

    running = await start_server(dataclasses.replace(config, rules=rules_file(tmp_path, TRANSPORTS)))
    recipients = ["gone@localhost", "no@localhost", "later@localhost", "box@localhost"]
    await session(running, lambda c: c.sendmail("alice@localhost", recipients, "Subject: x\r\n\r\nx\r\n"))
    records = await wait_journal(running, lambda rs: sum(r.tag.startswith("delivery.") for r in rs) >= 4, timeout=20)
    outcomes = {
        e.recipient: e for e in map(qe.decode, records) if isinstance(e, qe.DeliverySucceeded | qe.DeliveryFailed | qe.DeliveryDeferred)
    }
    assert isinstance(outcomes["gone@localhost"], qe.DeliverySucceeded) and outcomes["gone@localhost"].routed_by == "rule"
    assert isinstance(outcomes["box@localhost"], qe.DeliverySucceeded) and outcomes["box@localhost"].transport == "mbox"
    refused = outcomes["no@localhost"]
    assert isinstance(refused, qe.DeliveryFailed) and refused.reason == "we do not take mail for no" and refused.route == "error"
    waiting = outcomes["later@localhost"]  # a pipe that is not configured: kept, not lost
    assert isinstance(waiting, qe.DeliveryDeferred) and "no [delivery.pipe.missing]" in waiting.reason
    assert maildir_files(config, "gone") == [] and maildir_files(config, "no") == []
    running.cancel_scope.cancel()


async def test_a_delivery_quarantine_holds_every_recipient_until_released(start_server: Any, config: Config, tmp_path: Path) -> None:
    released = tmp_path / "released"
    rules = rules_file(
        tmp_path,
        f"""
        from pathlib import Path

        @rule.delivery
        def hold_for_carol(ctx):
            if ctx.recipient == "carol@localhost" and not Path({str(released)!r}).exists():
                return quarantine("review")
        """,
    )
    running = await start_server(dataclasses.replace(config, rules=rules))
    await session(running, lambda c: c.sendmail("a@example.org", ["bob@localhost", "carol@localhost"], "Subject: x\r\n\r\nx\r\n"))
    with trio.fail_after(10):
        while not any(m.quarantine for m in running.projection.state.messages.values()):
            await trio.sleep(0.02)
    [kept] = running.projection.state.messages.values()
    assert kept.quarantine == "review" and maildir_files(config, "bob") == []  # bob came first: not delivered either
    released.touch()
    queue_inspect.act(running.journal, "release", kept.queue_id)
    await wait_delivered(running, 1)
    assert len(maildir_files(config, "bob")) == 1 and len(maildir_files(config, "carol")) == 1
    running.cancel_scope.cancel()
