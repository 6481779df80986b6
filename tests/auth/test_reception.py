"""SPF, DKIM, DMARC and ARC on mail received over SMTP, against the auth zone on a loopback
DNS server: every result, the replies of each mode, the headers of the delivered message,
the journal's record of each evaluation."""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from vsmtp.auth import arc as arc_mod
from vsmtp.auth import dkim
from vsmtp.auth.dkim import Signer
from vsmtp.auth.results import authentication_results
from vsmtp.config import Config
from vsmtp.daemon import Running
from vsmtp.queue import events as qe

from ..conftest import has_tag, maildir_files, port_of, wait_delivered, wait_journal, with_changes
from ..dnsserver import DnsServer
from .conftest import Key

DATE = "Tue, 1 Dec 2026 10:00:00 +0000"


def message(from_header: str, subject: str = "hello", body: str = "Hello.\r\n", **extra: str) -> bytes:
    headers = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in extra.items())
    return f"From: {from_header}\r\nTo: bob@localhost\r\nSubject: {subject}\r\nDate: {DATE}\r\n{headers}\r\n{body}".encode()


def signed(raw: bytes, *keys: Key) -> bytes:
    signer = Signer([k.secret for k in keys], headers=("from", "to", "subject", "date"), oversign=("from",))
    return signer.sign(raw, keys[0].domain) + raw


def send(running: Running, sender: str, raw: bytes, *, helo: str = "client.test", rcpt: str = "bob@localhost") -> tuple[int, str]:
    """EHLO, MAIL, RCPT, DATA; the first refusal's (code, text), or the 250 to DATA."""
    with smtplib.SMTP("127.0.0.1", port_of(running), timeout=15) as client:
        client.ehlo(helo)
        for step in (lambda: client.mail(sender), lambda: client.rcpt(rcpt), lambda: client.data(raw)):
            code, text = step()
            if code >= 400:
                return code, text.decode()
        return code, text.decode()


def delivered(config: Config, index: int = -1) -> email.message.Message:
    return email.message_from_bytes(maildir_files(config, "bob")[index].read_bytes(), policy=email.policy.compat32)


def events(running: Running, cls: type[qe.JournalEvent]) -> list[Any]:
    return [e for r in running.journal.read(0) if r.tag == cls.TAG for e in [qe.decode(r)]]


async def test_every_spf_result_is_journaled_and_told_in_the_headers(start_server: Any, auth_config: Config) -> None:
    running = await start_server(auth_config)
    expected = {
        "spf-pass": "pass",
        "spf-fail": "fail",
        "spf-soft": "softfail",
        "spf-neutral": "neutral",
        "spf-none": "none",
        "spf-perm": "permerror",  # eleven DNS-querying terms (RFC 7208 4.6.4 allows ten)
        "spf-temp": "temperror",  # its include's server never answers
    }
    for name in expected:
        code, _ = await trio.to_thread.run_sync(send, running, f"a@{name}.test", message(f"a@{name}.test"))
        assert code == 250, name  # tag mode: told, not refused
    await wait_delivered(running, len(expected), timeout=20)
    found = {e.result["domain"]: e.result["result"] for e in events(running, qe.SpfChecked)}
    assert found == {f"{name}.test": result for name, result in expected.items()}
    by_subject = {}
    for path in maildir_files(auth_config, "bob"):
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
        by_subject[parsed["Return-Path"]] = parsed
    first = by_subject["<a@spf-pass.test>"]
    assert first["Received-SPF"].startswith("pass (mx.test:")
    assert "identity=mailfrom" in first["Received-SPF"]
    assert first["Authentication-Results"].split(";")[0] == "mx.test"
    assert "spf=pass smtp.mailfrom=a@spf-pass.test" in first["Authentication-Results"]
    assert "spf=temperror" in by_subject["<a@spf-temp.test>"]["Authentication-Results"]


@pytest.mark.parametrize(
    ("domain", "reply"),
    [
        ("spf-fail", (550, "5.7.23")),
        ("spf-temp", (451, "4.7.24")),
        ("spf-soft", (250, "2.1.0")),
        ("spf-neutral", (250, "2.1.0")),
        ("spf-none", (250, "2.1.0")),
        ("spf-perm", (250, "2.1.0")),
        ("spf-pass", (250, "2.1.0")),
    ],
)
async def test_reject_mode_refuses_a_fail_and_defers_a_temperror(start_server: Any, auth_config: Config, domain: str, reply: Any) -> None:
    running = await start_server(with_changes(auth_config, spf={"mode": "reject", "timeout": 1.0}))

    def mail() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port_of(running), timeout=15) as client:
            client.ehlo("client.test")
            return client.mail(f"a@{domain}.test")

    code, text = await trio.to_thread.run_sync(mail)
    assert (code, text.decode().split()[0]) == reply


async def test_off_mode_checks_nothing(start_server: Any, auth_config: Config, auth_dns: DnsServer) -> None:
    running = await start_server(with_changes(auth_config, spf={"mode": "off"}, dmarc={"mode": "off"}, dkim={"verify": False}))
    asked = len(auth_dns.queries)
    assert (await trio.to_thread.run_sync(send, running, "a@spf-fail.test", message("a@strict.test")))[0] == 250
    await wait_delivered(running, 1)
    assert not events(running, qe.SpfChecked) and not events(running, qe.DmarcEvaluated)
    assert len(auth_dns.queries) == asked
    assert "Authentication-Results" not in delivered(auth_config)


async def test_the_null_sender_is_checked_by_its_helo_name(start_server: Any, auth_config: Config) -> None:
    running = await start_server(auth_config)
    raw = message("mailer-daemon@mail.helo-pass.test")
    code, _ = await trio.to_thread.run_sync(lambda: send(running, "", raw, helo="mail.helo-pass.test"))
    assert code == 250
    [checked] = events(running, qe.SpfChecked)
    assert (checked.result["identity"], checked.result["result"], checked.result["domain"]) == ("helo", "pass", "mail.helo-pass.test")


async def test_trusted_clients_are_not_checked(start_server: Any, auth_config: Config, auth_dns: DnsServer) -> None:
    running = await start_server(with_changes(auth_config, relay={"networks": ("127.0.0.0/8",)}))
    asked = len(auth_dns.queries)
    assert (await trio.to_thread.run_sync(send, running, "a@spf-fail.test", message("a@strict.test")))[0] == 250
    await wait_delivered(running, 1)
    assert not events(running, qe.SpfChecked) and not events(running, qe.DmarcEvaluated)
    assert len(auth_dns.queries) == asked  # no lookup at all
    assert "Authentication-Results" not in delivered(auth_config)


async def test_dkim_pass_a_changed_body_and_a_missing_key(start_server: Any, auth_config: Config, keys: dict[str, Key]) -> None:
    running = await start_server(auth_config)
    good = signed(message("a@signed.test", "good"), keys["SIGNED_RSA"], keys["SIGNED_ED"])
    changed = signed(message("a@signed.test", "changed"), keys["SIGNED_RSA"]).replace(b"Hello.", b"Hello!")
    gone = Key("signed.test", "gone", "rsa-sha256", keys["SIGNED_RSA"].path, "")
    missing = signed(message("a@signed.test", "missing"), gone)
    for raw in (good, changed, missing):
        assert (await trio.to_thread.run_sync(send, running, "a@spf-neutral.test", raw))[0] == 250
    await wait_delivered(running, 3)
    results = [[(s["result"], s["selector"], s["reason"]) for s in e.result["signatures"]] for e in events(running, qe.DkimVerified)]
    assert results[0] == [("pass", "ed", ""), ("pass", "sel", "")]
    assert results[1] == [("fail", "sel", "body hash mismatch")]
    assert results[2][0][:2] == ("permerror", "gone") and "no key" in results[2][0][2]
    header = delivered(auth_config, 0)["Authentication-Results"]
    assert "dkim=pass header.d=signed.test header.s=ed header.a=ed25519-sha256" in header.replace("\r\n\t", " ")


async def test_a_large_spilled_message_is_verified_as_it_streams(start_server: Any, auth_config: Config, keys: dict[str, Key]) -> None:
    """Past limits.memory_per_message the body is in a spill file: DKIM hashes it from there,
    DMARC and the Authentication-Results header work on the header section alone."""
    running = await start_server(with_changes(auth_config, limits={"memory_per_message": 32 * 1024}))
    body = "".join(f"line {n} of a long message, with  two spaces \t\r\n" for n in range(60_000))  # about 3 MB
    good = signed(message("a@signed.test", "large", body), keys["SIGNED_RSA"], keys["SIGNED_ED"])
    changed = signed(message("a@signed.test", "large changed", body), keys["SIGNED_RSA"]).replace(b"line 59999", b"line 59990")
    for raw in (good, changed):
        assert (await trio.to_thread.run_sync(send, running, "x@spf-neutral.test", raw))[0] == 250
    await wait_delivered(running, 2)
    results = [[(s["result"], s["selector"], s["reason"]) for s in e.result["signatures"]] for e in events(running, qe.DkimVerified)]
    assert results == [[("pass", "ed", ""), ("pass", "sel", "")], [("fail", "sel", "body hash mismatch")]]
    assert [e.result["result"] for e in events(running, qe.DmarcEvaluated)] == ["pass", "fail"]
    first = maildir_files(auth_config, "bob")[0].read_bytes()
    assert b"dkim=pass header.d=signed.test" in first and first.endswith(body.encode())


async def test_dmarc_passes_by_spf_alignment_alone_and_by_dkim_alignment_alone(
    start_server: Any, auth_config: Config, keys: dict[str, Key]
) -> None:
    running = await start_server(with_changes(auth_config, dmarc={"mode": "enforce"}))
    by_spf = message("Alice <alice@spf-pass.test>", "by spf")  # unsigned; MAIL FROM passes SPF
    by_dkim = signed(message("a@signed.test", "by dkim"), keys["SIGNED_RSA"])  # MAIL FROM fails SPF
    assert (await trio.to_thread.run_sync(send, running, "bounce@spf-pass.test", by_spf))[0] == 250
    assert (await trio.to_thread.run_sync(send, running, "x@spf-fail.test", by_dkim))[0] == 250
    await wait_delivered(running, 2)
    first, second = (e.result for e in events(running, qe.DmarcEvaluated))
    assert (first["result"], first["spf_aligned"], first["dkim_aligned"]) == ("pass", True, False)
    assert (second["result"], second["spf_aligned"], second["dkim_aligned"]) == ("pass", False, True)
    assert "dmarc=pass (p=reject dis=none) header.from=signed.test" in delivered(auth_config, 1)["Authentication-Results"]


async def test_a_dmarc_fail_under_p_reject_is_refused_in_enforce_and_told_in_tag(start_server: Any, auth_config: Config) -> None:
    enforcing = await start_server(with_changes(auth_config, dmarc={"mode": "enforce"}))
    code, text = await trio.to_thread.run_sync(send, enforcing, "x@spf-neutral.test", message("ceo@strict.test"))
    assert (code, text.split()[0]) == (550, "5.7.1") and "DMARC" in text
    await wait_journal(enforcing, has_tag(qe.DmarcEvaluated.TAG))
    [evaluated] = events(enforcing, qe.DmarcEvaluated)
    assert (evaluated.result["result"], evaluated.result["disposition"], evaluated.source_ip) == ("fail", "reject", "127.0.0.1")
    enforcing.cancel_scope.cancel()

    tagging_config = with_changes(auth_config, journal={"path": str(Path(auth_config.journal.path).with_name("tag-journal"))})
    tagging = await start_server(tagging_config)
    assert (await trio.to_thread.run_sync(send, tagging, "x@spf-neutral.test", message("ceo@strict.test")))[0] == 250
    await wait_delivered(tagging, 1)
    assert "dmarc=fail (p=reject dis=none) header.from=strict.test" in delivered(tagging_config)["Authentication-Results"]


async def test_p_quarantine_and_a_subdomain_policy(start_server: Any, auth_config: Config) -> None:
    running = await start_server(with_changes(auth_config, dmarc={"mode": "enforce"}))
    assert (await trio.to_thread.run_sync(send, running, "x@spf-neutral.test", message("a@quar.test")))[0] == 250
    code, text = await trio.to_thread.run_sync(send, running, "x@spf-neutral.test", message("a@sub.parent.test"))
    assert code == 550 and "parent.test" in text  # sp=reject
    assert (await trio.to_thread.run_sync(send, running, "x@spf-neutral.test", message("a@nx.parent.test")))[0] == 250  # np=quarantine
    assert (await trio.to_thread.run_sync(send, running, "x@spf-neutral.test", message("a@parent.test")))[0] == 250  # p=none
    await wait_journal(running, lambda records: sum(r.tag == qe.MessageQuarantined.TAG for r in records) >= 2)
    await wait_journal(running, has_tag(qe.DmarcEvaluated.TAG, 4))
    quarantined = events(running, qe.MessageQuarantined)
    assert [(q.queue, q.by) for q in quarantined] == [("dmarc", "vsmtp:dmarc"), ("dmarc", "vsmtp:dmarc")]
    assert [e.result["policy"] for e in events(running, qe.DmarcEvaluated)] == ["quarantine", "reject", "quarantine", "none"]


def forwarded(keys: dict[str, Key], *, break_after_seal: bool = False) -> bytes:
    """A message signed by signed.test, then changed and sealed by the forwarder fwd.test (a
    mailing list that adds a footer): its DKIM signature breaks, its ARC chain holds."""
    rsa, forwarder = keys["SIGNED_RSA"], keys["FORWARDER"]
    original = signed(message("alice@signed.test", "to the list"), rsa)
    published = {f"{rsa.selector}._domainkey.{rsa.domain}": rsa.record.encode()}
    results = authentication_results("lists.fwd.test", dkim=dkim.verify(original, published))
    changed = (results + original).replace(b"Hello.\r\n", b"Hello.\r\n-- \r\nThe list footer\r\n")
    sealed = arc_mod.seal(changed, forwarder.secret, authserv_id="lists.fwd.test", now=int(time.time())) + changed
    return sealed.replace(b"The list footer", b"The list footer, changed later") if break_after_seal else sealed


async def test_an_arc_chain_from_a_trusted_forwarder_overrides_a_dmarc_fail(
    start_server: Any, auth_config: Config, keys: dict[str, Key]
) -> None:
    trusting = with_changes(auth_config, dmarc={"mode": "enforce"}, arc={"trusted_sealers": ("fwd.test",)})
    running = await start_server(trusting)
    assert (await trio.to_thread.run_sync(send, running, "list@spf-neutral.test", forwarded(keys)))[0] == 250
    code, _ = await trio.to_thread.run_sync(send, running, "list@spf-neutral.test", forwarded(keys, break_after_seal=True))
    assert code == 550  # the chain is broken: no override
    await wait_journal(running, has_tag(qe.ArcVerified.TAG, 2))
    [good, broken] = events(running, qe.ArcVerified)
    assert (good.result["result"], good.result["sealers"]) == ("pass", ["fwd.test"])
    assert broken.result["result"] == "fail"
    first = events(running, qe.DmarcEvaluated)[0].result
    assert (first["result"], first["disposition"]) == ("fail", "none") and "trusted sealer fwd.test" in first["reason"]
    await wait_delivered(running, 1)
    assert "arc=pass" in delivered(trusting)["Authentication-Results"]


async def test_a_forged_authentication_results_claiming_our_name_is_removed(start_server: Any, auth_config: Config) -> None:
    running = await start_server(auth_config)
    forged = message("a@spf-pass.test", Authentication_Results="mx.test; spf=pass smtp.mailfrom=x@bank.example", X_Other="kept").replace(
        b"X-Other: kept", b"Authentication-Results: other.example; dkim=none"
    )
    assert (await trio.to_thread.run_sync(send, running, "a@spf-pass.test", forged))[0] == 250
    await wait_delivered(running, 1)
    results = delivered(auth_config).get_all("Authentication-Results")
    assert len(results) == 2 and "bank.example" not in "".join(results)
    assert results[1] == "other.example; dkim=none"


async def test_a_slow_dns_answer_delays_only_its_own_session(start_server: Any, auth_config: Config, auth_dns: DnsServer) -> None:
    running = await start_server(with_changes(auth_config, spf={"timeout": 3.0}))
    unanswered = ("spf.silent.test.", "(no answer)")
    before = auth_dns.queries.count(unanswered)
    order: list[str] = []

    def slow() -> None:
        send(running, "a@spf-temp.test", message("a@spf-temp.test"))  # its SPF waits for a server that never answers
        order.append("slow")

    def quick() -> None:
        assert send(running, "a@spf-pass.test", message("a@spf-pass.test"))[0] == 250
        order.append("quick")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, slow)
        with trio.fail_after(5):
            while auth_dns.queries.count(unanswered) == before:  # until the slow session waits on its lookup
                await trio.sleep(0.01)
        nursery.start_soon(trio.to_thread.run_sync, quick)
    assert order == ["quick", "slow"]
