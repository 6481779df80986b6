"""Rules over sender authentication: the three examples of docs/rules.md run over SMTP,
`vsmtp rules test` replays the results as recorded (no lookup), `vsmtp trace` shows them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import trio

from vsmtp.config import Config
from vsmtp.queue import events as qe
from vsmtp.rules import RulesFile
from vsmtp.rules.replay import replay

from ..conftest import has_tag, maildir_files, wait_delivered, wait_journal, with_changes
from ..daemon import run_cli
from ..dnsserver import DnsServer
from .conftest import Key
from .test_reception import delivered, events, message, send, signed

DOCS = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def example(function: str) -> str:
    """The docs/rules.md python block that defines `function`."""
    for block in re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL):
        if f"def {function}(" in block:
            return str(block)
    raise AssertionError(f"docs/rules.md has no example defining {function}")


def rules(tmp_path: Path, text: str, name: str = "rules.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def test_spf_fail_refused_except_from_listed_forwarders(start_server: Any, auth_config: Config, tmp_path: Path) -> None:
    text = example("spf_fail_refused")
    running = await start_server(with_changes(auth_config, rules=rules(tmp_path, text)))
    code, reply = await trio.to_thread.run_sync(send, running, "a@spf-fail.test", message("a@spf-fail.test"))
    assert (code, reply.split()[0]) == (550, "5.7.23") and "spf-fail.test does not send from 127.0.0.1" in reply
    assert (await trio.to_thread.run_sync(send, running, "a@spf-pass.test", message("a@spf-pass.test")))[0] == 250
    running.cancel_scope.cancel()
    forwarding = with_changes(
        auth_config,
        rules=rules(tmp_path, text.replace("192.0.2.0/24", "127.0.0.0/8"), "forwarders.py"),
        journal={"path": str(tmp_path / "journal-2")},
    )
    running = await start_server(forwarding)
    assert (await trio.to_thread.run_sync(send, running, "a@spf-fail.test", message("a@spf-fail.test")))[0] == 250


async def test_dmarc_fail_quarantined_in_tag_mode(start_server: Any, auth_config: Config, tmp_path: Path) -> None:
    running = await start_server(with_changes(auth_config, rules=rules(tmp_path, example("dmarc_fail_quarantined"))))
    assert (await trio.to_thread.run_sync(send, running, "x@spf-neutral.test", message("ceo@strict.test")))[0] == 250
    assert (await trio.to_thread.run_sync(send, running, "a@spf-pass.test", message("a@spf-pass.test")))[0] == 250
    records = await wait_journal(running, has_tag(qe.MessageQuarantined.TAG))
    [held] = [qe.decode(r) for r in records if r.tag == qe.MessageQuarantined.TAG]
    assert (held.queue, held.by) == ("dmarc-review", "rules:dmarc_fail_quarantined")
    await wait_delivered(running, 1)
    assert len(maildir_files(auth_config, "bob")) == 1  # the passing one


async def test_a_partners_signed_mail_is_marked_and_taken_whatever_its_dmarc_policy(
    start_server: Any, auth_config: Config, keys: dict[str, Key], tmp_path: Path
) -> None:
    text = example("partner_signed").replace('Domains("partner.example", subdomains=True)', 'Domains("signed.test", subdomains=True)')
    config = with_changes(auth_config, rules=rules(tmp_path, text), dmarc={"mode": "enforce"})
    running = await start_server(config)
    # From a domain with p=reject, failing DMARC, but signed by the partner: taken and marked.
    raw = signed(message("ceo@strict.test", "from the partner"), keys["SIGNED_RSA"])
    assert (await trio.to_thread.run_sync(send, running, "x@spf-neutral.test", raw))[0] == 250
    await wait_delivered(running, 1)
    assert delivered(config)["X-Partner"] == "signed by signed.test"
    await wait_journal(running, has_tag(qe.DmarcEvaluated.TAG))
    [evaluated] = events(running, qe.DmarcEvaluated)
    assert evaluated.result["disposition"] == "none" and "decided by rules:partner_signed" in evaluated.result["reason"]


async def test_rules_test_replays_the_results_recorded_without_a_lookup(
    start_server: Any, auth_config: Config, auth_dns: DnsServer, tmp_path: Path
) -> None:
    running = await start_server(auth_config)
    for domain in ("spf-fail", "spf-pass"):
        assert (await trio.to_thread.run_sync(send, running, f"a@{domain}.test", message(f"a@{domain}.test")))[0] == 250
    await wait_delivered(running, 2)
    asked = len(auth_dns.queries)
    new_rules = RulesFile.load(rules(tmp_path, example("spf_fail_refused"), "new.py"))
    differences, summary = await replay(running.journal, auth_config, new_rules)
    assert len(auth_dns.queries) == asked  # every result came from the journal
    assert [(d.stage, d.recorded, d.replayed.split()[:2]) for d in differences] == [("mail", "next", ["reject", "550"])]
    assert summary.sessions == 2


async def test_trace_shows_the_authentication_results(start_server: Any, auth_config: Config, tmp_path: Path) -> None:
    running = await start_server(auth_config)
    assert (await trio.to_thread.run_sync(send, running, "a@spf-pass.test", message("a@spf-pass.test")))[0] == 250
    await wait_delivered(running, 1)
    [accepted] = events(running, qe.MessageAccepted)
    (tmp_path / "trace.toml").write_text(f'[journal]\npath = "{auth_config.journal.path}"\n')
    done = await trio.to_thread.run_sync(lambda: run_cli(tmp_path, "trace", accepted.queue_id, "--config", "trace.toml"))
    assert done.returncode == 0, done.stderr
    [spf] = [line for line in done.stdout.splitlines() if "auth.spf" in line]
    [dmarc] = [line for line in done.stdout.splitlines() if "auth.dmarc" in line]
    assert "result=pass" in spf and "domain=spf-pass.test" in spf
    assert "source_ip=127.0.0.1" in dmarc and "result=pass" in dmarc
