"""`vsmtp dmarc report`: the aggregate reports of a period, folded from the journal's
auth.dmarc events, read back by an independent parser (parsedmarc) with counts that match
the messages sent; --send mails them only where the domains asked, with consent for
addresses outside their organization (RFC 7489 7.1)."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import parsedmarc
import trio

from vsmtp.config import Config
from vsmtp.queue import events as qe

from ..conftest import has_tag, wait_delivered, wait_journal, with_changes
from ..daemon import run_cli
from .test_reception import message, send


def toml(config: Config) -> str:
    return (
        f'hostname = "{config.hostname}"\n[journal]\npath = "{config.journal.path}"\n'
        f'[dns]\nnameservers = ["{config.dns.nameservers[0]}"]\ntimeout = 2.0\n'
        '[dmarc]\nreport_org = "vsmtp tests"\nreport_from = "dmarc-reports@ours.test"\nreport_limit = 1\n'
    )


async def test_a_report_parses_and_counts_every_message(start_server: Any, auth_config: Config, tmp_path: Path) -> None:
    config = with_changes(auth_config, dmarc={"mode": "enforce"})
    running = await start_server(config)
    since = time.time() - 1
    for _ in range(3):
        assert (await trio.to_thread.run_sync(send, running, "a@spf-pass.test", message("a@spf-pass.test")))[0] == 250
    for _ in range(2):
        assert (await trio.to_thread.run_sync(send, running, "x@spf-neutral.test", message("ceo@strict.test")))[0] == 550
    assert (await trio.to_thread.run_sync(send, running, "x@spf-neutral.test", message("a@spf-none.test")))[0] == 250  # no policy
    await wait_journal(running, has_tag(qe.DmarcEvaluated.TAG, 6))
    await wait_delivered(running, 4)
    (tmp_path / "vsmtp.toml").write_text(toml(config))
    done = await trio.to_thread.run_sync(
        lambda: run_cli(tmp_path, "dmarc", "report", "--config", "vsmtp.toml", "--since", str(since), "--output", "reports", "--json")
    )
    assert done.returncode == 0, done.stderr
    written = {row["domain"]: row for row in json.loads(done.stdout)}
    assert set(written) == {"spf-pass.test", "strict.test"}  # spf-none.test publishes no policy: nobody to report to
    assert Path(written["strict.test"]["file"]).name.startswith("mx.test!strict.test!")
    for domain, count, disposition, dmarc_spf in (("spf-pass.test", 3, "none", "pass"), ("strict.test", 2, "reject", "fail")):
        path = tmp_path / written[domain]["file"]
        assert path.name.endswith(".xml.gz") and gzip.decompress(path.read_bytes()).startswith(b"<?xml")
        report = parsedmarc.parse_aggregate_report_file(path.read_bytes(), offline=True, always_use_local_files=True)
        assert report["report_metadata"]["org_name"] == "vsmtp tests"
        assert report["policy_published"]["domain"] == domain and report["policy_published"]["p"] == "reject"
        assert sum(r["count"] for r in report["records"]) == count
        [record] = report["records"]
        assert record["source"]["ip_address"] == "127.0.0.1"
        assert record["policy_evaluated"]["disposition"] == disposition
        assert record["policy_evaluated"]["spf"] == dmarc_spf
        assert record["identifiers"]["header_from"] == domain


async def test_reports_are_sent_only_where_the_domain_asked(start_server: Any, auth_config: Config, tmp_path: Path) -> None:
    running = await start_server(auth_config)
    since = time.time() - 1
    assert (await trio.to_thread.run_sync(send, running, "x@spf-neutral.test", message("ceo@strict.test")))[0] == 250
    assert (await trio.to_thread.run_sync(send, running, "a@spf-pass.test", message("a@spf-pass.test")))[0] == 250
    await wait_journal(running, has_tag(qe.DmarcEvaluated.TAG, 2))
    (tmp_path / "vsmtp.toml").write_text(toml(auth_config))
    done = await trio.to_thread.run_sync(
        lambda: run_cli(tmp_path, "dmarc", "report", "--config", "vsmtp.toml", "--since", str(since), "--send", "--json")
    )
    assert done.returncode == 0, done.stderr
    rows = {row["domain"]: row for row in json.loads(done.stdout)}
    # strict.test asks for two addresses outside its organization: reports.test agreed
    # (strict.test._report._dmarc.reports.test), elsewhere.test did not.
    assert rows["strict.test"]["sent_to"] == ["dmarc@reports.test"], rows
    [(address, why)] = rows["strict.test"]["skipped"]
    assert address == "nobody@elsewhere.test" and "did not agree" in why
    assert rows["spf-pass.test"]["sent_to"] == ["dmarc@spf-pass.test"]  # its own organization: no consent needed
    records = await wait_journal(running, lambda rs: sum(r.tag == qe.MessageAccepted.TAG for r in rs) >= 4)
    # Queued by the command, not received (no session); not the bounce of one that failed since (from <>).
    reports = [e for e in (qe.decode(r) for r in records if r.tag == qe.MessageAccepted.TAG) if e.session_id == "" and e.reverse_path]
    assert sorted(r.recipients[0] for r in reports) == ["dmarc@reports.test", "dmarc@spf-pass.test"]
    assert {r.reverse_path for r in reports} == {"dmarc-reports@ours.test"}
    body = running.journal.blob(reports[0].blob)
    assert body is not None and b"Subject: Report Domain: " in body and b"Content-Type: application/gzip" in body
