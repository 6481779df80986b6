"""DANE (RFC 7672) end to end, against real DNSSEC: NSD serves dane.test signed by
dnssec-signzone and plain.test unsigned, Unbound validates with dane.test's trust anchor
(tests/dnssec.py), and vsmtp asks Unbound (`dns.dnssec`). Every MX host is one receiving
server on 127.0.0.2 whose certificate (trustme, issued by an intermediate CA) names
mx.ta.dane.test only; the TLSA records of each MX host say what each test needs."""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vsmtp.config import Config, DnsConfig, load
from vsmtp.errors import ConfigError
from vsmtp.queue import events as qe

from ..conftest import sendmail, wait_journal, with_changes
from ..daemon import run_cli
from ..dnssec import ValidatingDns, free_port
from ..postfix import PrivatePostfix, installed
from ..smtpsink import Sink
from .test_delivery import MESSAGE
from .test_requiretls import submit


def spki_sha256(pem: bytes) -> str:
    key = x509.load_pem_x509_certificate(pem).public_key()
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def cert_sha256(pem: bytes) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)).hexdigest()


class World:
    def __init__(self, directory: Path) -> None:
        self.root = trustme.CA()
        self.intermediate = self.root.create_child_ca()
        self.leaf = self.intermediate.issue_cert("mx.ta.dane.test")
        self.port = free_port()  # the receiving server's; the TLSA records are at _PORT._tcp.HOST
        leaf_key = spki_sha256(self.leaf.cert_chain_pems[0].bytes())
        other_key = self.other_key = spki_sha256(trustme.CA().issue_cert("other.test").cert_chain_pems[0].bytes())
        anchor = cert_sha256(self.intermediate.cert_pem.bytes())
        tlsa = f"_{self.port}._tcp"
        signed = f"""$TTL 300
@ SOA ns.dane.test. hostmaster.dane.test. 1 3600 600 86400 300
@ NS ns.dane.test.
ns A 127.0.0.1
ee MX 10 mx.ee
mx.ee A 127.0.0.2
{tlsa}.mx.ee TLSA 3 1 1 {leaf_key}
ta MX 10 mx.ta
mx.ta A 127.0.0.2
{tlsa}.mx.ta TLSA 2 0 1 {anchor}
bad MX 10 mx.bad
mx.bad A 127.0.0.2
{tlsa}.mx.bad TLSA 3 1 1 {other_key}
bogus MX 10 mx.bogus
mx.bogus A 127.0.0.2
{tlsa}.mx.bogus TLSA 3 1 1 {leaf_key}
unusable MX 10 mx.unusable
mx.unusable A 127.0.0.2
{tlsa}.mx.unusable TLSA 1 1 1 {leaf_key}
none MX 10 mx.none
mx.none A 127.0.0.2
cname MX 10 alias.cname
alias.cname CNAME mx.ta
"""
        unsigned = f"""$TTL 300
@ SOA ns.plain.test. hostmaster.plain.test. 1 3600 600 86400 300
@ NS ns.plain.test.
ns A 127.0.0.1
@ MX 10 mx
mx A 127.0.0.2
{tlsa}.mx TLSA 3 1 1 {other_key}
"""
        self.dns = ValidatingDns(
            directory,
            {"dane.test": signed, "plain.test": unsigned},
            signed={"dane.test"},
            corrupt=((f"{tlsa}.mx.bogus.dane.test", "TLSA"),),
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made = World(tmp_path_factory.mktemp("dnssec"))
    with made.dns:
        yield made


@pytest.fixture
def port(world: World) -> int:  # the receiving server's port (tests/remote/conftest.py start_sink)
    return world.port


@pytest.fixture
def dane_sender(config: Config, world: World) -> Config:
    return with_changes(
        config,
        relay={"networks": ("127.0.0.0/8",)},
        dns=DnsConfig(nameservers=(world.dns.address,), timeout=3, dnssec=True),
        delivery={"remote_port": world.port, "retry_first": 60.0, "retry_max": 60.0, "mta_sts": False},
    )


@pytest.fixture
async def sink(start_sink: Any, world: World) -> Sink:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    world.leaf.configure_cert(context)  # sends its chain: the server's certificate, then the intermediate
    made: Sink = await start_sink("127.0.0.2", tls=context, requiretls=True)
    return made


async def outcome(running: Any) -> tuple[qe.DeliverySucceeded | qe.DeliveryDeferred, list[qe.DeliveryAttempted]]:
    tags = (qe.DeliverySucceeded.TAG, qe.DeliveryDeferred.TAG)
    records = await wait_journal(running, lambda rs: any(r.tag in tags for r in rs), timeout=15)
    events = list(map(qe.decode, records))
    found = next(e for e in events if isinstance(e, qe.DeliverySucceeded | qe.DeliveryDeferred))
    return found, [e for e in events if isinstance(e, qe.DeliveryAttempted)]


async def test_a_matching_dane_ee_record_authenticates_the_host_whatever_its_name(
    start_server: Any, dane_sender: Config, sink: Sink
) -> None:
    running = await start_server(dane_sender)
    await sendmail(running, "a@example.org", ["user@ee.dane.test"], MESSAGE)
    done, attempts = await outcome(running)
    assert isinstance(done, qe.DeliverySucceeded), done
    assert [(m.recipients, m.tls) for m in sink.received] == [(["user@ee.dane.test"], True)]
    assert [(a.host, a.policy, a.tls_result) for a in attempts] == [("mx.ee.dane.test", "tlsa", "success")]


async def test_a_dane_ta_record_authenticates_the_chain_and_the_name(start_server: Any, dane_sender: Config, sink: Sink) -> None:
    running = await start_server(dane_sender)
    await sendmail(running, "a@example.org", ["user@ta.dane.test"], MESSAGE)
    done, attempts = await outcome(running)
    assert isinstance(done, qe.DeliverySucceeded), done
    assert len(sink.received) == 1 and sink.received[0].tls
    assert [(a.policy, a.tls_result) for a in attempts] == [("tlsa", "success")]


async def test_an_mx_host_that_is_a_cname_is_looked_up_where_it_leads(start_server: Any, dane_sender: Config, sink: Sink) -> None:
    """RFC 7672 2.2.2: mx host alias.cname.dane.test is a CNAME for mx.ta.dane.test, whose TLSA
    records (DANE-TA) are the ones that count, and whose name the certificate carries."""
    running = await start_server(dane_sender)
    await sendmail(running, "a@example.org", ["user@cname.dane.test"], MESSAGE)
    done, attempts = await outcome(running)
    assert isinstance(done, qe.DeliverySucceeded), done
    assert [(a.host, a.policy, a.tls_result) for a in attempts] == [("alias.cname.dane.test", "tlsa", "success")]
    assert attempts[0].tlsa and attempts[0].tlsa[0].startswith("2 0 1 ")


async def test_a_mismatching_record_defers_with_the_reason_and_nothing_is_sent(
    start_server: Any, dane_sender: Config, sink: Sink, tmp_path: Path, world: World
) -> None:
    running = await start_server(dane_sender)
    await sendmail(running, "a@example.org", ["user@bad.dane.test"], MESSAGE)
    done, attempts = await outcome(running)
    assert isinstance(done, qe.DeliveryDeferred) and done.stage == "tls", done
    assert "does not match its TLSA records (level dane: 3 1 1 " in done.reason and "3 1 1" in done.reason, done.reason
    assert sink.received == []
    assert [(a.host, a.tls, a.tls_result) for a in attempts] == [("mx.bad.dane.test", True, "tlsa-invalid")]  # refused after the handshake
    (tmp_path / "vsmtp.toml").write_text(f'hostname = "{dane_sender.hostname}"\n[journal]\npath = "{dane_sender.journal.path}"\n')
    day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    report = await trio.to_thread.run_sync(lambda: run_cli(tmp_path, "tlsrpt", "report", "--config", "vsmtp.toml", "--day", day))
    assert report.returncode == 0, report.stderr
    [policy] = json.loads(report.stdout)["policies"]
    assert policy["policy"] == {
        "policy-type": "tlsa",
        "policy-domain": "bad.dane.test",
        "policy-string": [f"3 1 1 {world.other_key}"],  # the records the certificate failed to match
        "mx-host": ["mx.bad.dane.test"],
    }
    assert policy["summary"] == {"total-successful-session-count": 0, "total-failure-session-count": 1}
    assert [d["result-type"] for d in policy["failure-details"]] == ["tlsa-invalid"]


async def test_a_bogus_signature_on_the_tlsa_records_defers_without_connecting(start_server: Any, dane_sender: Config, sink: Sink) -> None:
    running = await start_server(dane_sender)
    await sendmail(running, "a@example.org", ["user@bogus.dane.test"], MESSAGE)
    done, attempts = await outcome(running)
    assert isinstance(done, qe.DeliveryDeferred) and done.stage == "tls", done
    assert "cannot look up the TLSA records of mx.bogus.dane.test" in done.reason, done.reason
    assert sink.sessions == 0
    assert [(a.host, a.address, a.policy, a.tls_result) for a in attempts] == [("mx.bogus.dane.test", "", "tlsa", "dnssec-invalid")]


async def test_an_unsigned_zone_falls_back_to_the_domains_level(start_server: Any, dane_sender: Config, sink: Sink) -> None:
    """plain.test publishes a TLSA record that matches nothing, but without DNSSEC it cannot be trusted: may."""
    running = await start_server(dane_sender)
    await sendmail(running, "a@example.org", ["user@plain.test"], MESSAGE)
    done, attempts = await outcome(running)
    assert isinstance(done, qe.DeliverySucceeded), done
    assert len(sink.received) == 1
    assert [(a.policy, a.tls_result) for a in attempts] == [("no-policy-found", "success")]


async def test_unusable_records_still_require_tls_and_no_records_mean_may(start_server: Any, dane_sender: Config, sink: Sink) -> None:
    running = await start_server(dane_sender)
    await sendmail(running, "a@example.org", ["user@unusable.dane.test", "user@none.dane.test"], MESSAGE)
    await wait_journal(running, lambda rs: sum(r.tag == qe.DeliverySucceeded.TAG for r in rs) >= 2, timeout=15)
    assert sorted((m.recipients[0], m.tls) for m in sink.received) == [("user@none.dane.test", True), ("user@unusable.dane.test", True)]
    attempts = [e for e in map(qe.decode, running.journal.read(0)) if isinstance(e, qe.DeliveryAttempted)]
    assert sorted((a.domain, a.policy) for a in attempts) == [("none.dane.test", "no-policy-found"), ("unusable.dane.test", "tlsa")]


async def test_an_explicit_may_sets_dane_aside(start_server: Any, dane_sender: Config, sink: Sink) -> None:
    running = await start_server(with_changes(dane_sender, delivery={"tls_policy": {"bad.dane.test": "may"}}))
    await sendmail(running, "a@example.org", ["user@bad.dane.test"], MESSAGE)
    done, attempts = await outcome(running)
    assert isinstance(done, qe.DeliverySucceeded), done
    assert [(a.policy, a.tls_result) for a in attempts] == [("no-policy-found", "success")]


async def test_dane_only_refuses_a_domain_without_dnssec(start_server: Any, dane_sender: Config, sink: Sink) -> None:
    running = await start_server(with_changes(dane_sender, delivery={"tls_policy": {"plain.test": "dane-only"}}))
    await sendmail(running, "a@example.org", ["user@plain.test"], MESSAGE)
    done, attempts = await outcome(running)
    assert isinstance(done, qe.DeliveryDeferred), done
    assert "DANE: the MX or address records of mx.plain.test are not DNSSEC-validated" in done.reason, done.reason
    assert sink.sessions == 0 and [a.tls_result for a in attempts] == ["dane-required"]


async def test_tls_required_no_sets_the_published_policy_aside(start_server: Any, dane_sender: Config, sink: Sink) -> None:
    """RFC 8689 5: the sender asks for delivery whatever TLSA records say; TLS is still used where offered."""
    running = await start_server(dane_sender)
    await sendmail(running, "a@example.org", ["user@bad.dane.test"], "TLS-Required: No\r\n" + MESSAGE)
    done, attempts = await outcome(running)
    assert isinstance(done, qe.DeliverySucceeded), done
    assert [m.tls for m in sink.received] == [True]
    assert [(a.policy, a.tls_result) for a in attempts] == [("no-policy-found", "success")]


async def test_requiretls_goes_to_a_host_dane_authenticates(start_server: Any, dane_sender: Config, sink: Sink) -> None:
    running = await start_server(dane_sender)
    assert await trio.to_thread.run_sync(submit, running, "user@ee.dane.test") == (False, 555, 250)
    done, _ = await outcome(running)
    assert isinstance(done, qe.DeliverySucceeded), done
    [mail] = sink.mail_commands
    assert mail.endswith(b" REQUIRETLS")


async def test_a_real_postfix_mx_authenticated_by_dane(start_server: Any, dane_sender: Config, world: World, tmp_path: Path) -> None:
    """Postfix's smtpd (its own instance, STARTTLS with the world's certificate and its
    intermediate) as the MX host of ee.dane.test and ta.dane.test: both messages arrive in its
    Maildirs over TLS that DANE authenticated; bad.dane.test's mismatching record keeps the third."""
    if not installed():
        pytest.skip("postfix is not installed (Debian package postfix: tools/system-packages, as root)")
    root = Path(tempfile.mkdtemp(prefix="vsmtp-postfix-"))  # not under pytest's 0700 directory: Postfix's users walk it
    root.chmod(0o755)
    chain = root / "chain.pem"
    chain.write_bytes(world.leaf.private_key_pem.bytes() + b"".join(p.bytes() for p in world.leaf.cert_chain_pems))
    chain.chmod(0o600)
    domains = {"ee.dane.test": ["user"], "ta.dane.test": ["user"], "bad.dane.test": ["user"]}
    postfix = PrivatePostfix(root / "postfix", domains=domains, host="127.0.0.2", port=world.port, tls_chain=chain)
    try:
        await trio.to_thread.run_sync(postfix.start)
        running = await start_server(dane_sender)
        await sendmail(running, "a@example.org", ["user@ee.dane.test", "user@ta.dane.test", "user@bad.dane.test"], MESSAGE)
        tags = (qe.DeliverySucceeded.TAG, qe.DeliveryDeferred.TAG)
        records = await wait_journal(running, lambda rs: sum(r.tag in tags for r in rs) >= 3, timeout=30)
        outcomes = {e.recipient: e for e in map(qe.decode, records) if isinstance(e, qe.DeliverySucceeded | qe.DeliveryDeferred)}
        assert isinstance(outcomes["user@ee.dane.test"], qe.DeliverySucceeded), outcomes
        assert isinstance(outcomes["user@ta.dane.test"], qe.DeliverySucceeded), outcomes
        assert isinstance(outcomes["user@bad.dane.test"], qe.DeliveryDeferred), outcomes
        with trio.fail_after(20):  # Postfix's own queue, then its virtual delivery
            while not all(list(postfix.maildir(d, "user").glob("*")) for d in ("ee.dane.test", "ta.dane.test")):
                await trio.sleep(0.1)
        assert list(postfix.maildir("bad.dane.test", "user").glob("*")) == []
        assert postfix.log.count("TLS connection established from") >= 2, postfix.log[-3000:]
        attempts = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliveryAttempted)]
        assert sorted((a.host, a.tls_result) for a in attempts) == [
            ("mx.bad.dane.test", "tlsa-invalid"),
            ("mx.ee.dane.test", "success"),
            ("mx.ta.dane.test", "success"),
        ]
    finally:
        await trio.to_thread.run_sync(postfix.stop)
        shutil.rmtree(root, ignore_errors=True)


def test_dane_needs_a_validating_resolver(tmp_path: Path) -> None:
    path = tmp_path / "vsmtp.toml"
    path.write_text('[delivery.tls_policy]\n"example.net" = "dane-only"\n')
    with pytest.raises(ConfigError, match=r"line 2: delivery\.tls_policy\.example\.net: dane-only needs a validating resolver"):
        load(path)
    path.write_text('[dns]\nnameservers = ["127.0.0.1:5353"]\ndnssec = true\n[delivery.tls_policy]\n"example.net" = "dane"\n')
    assert load(path).delivery.tls_policy == {"example.net": "dane"}
    path.write_text('[relayhost]\nurl = "smtp://relay.example:587"\ntls = "dane"\n')
    with pytest.raises(ConfigError, match=r"relayhost\.tls.*DANE is for MX hosts"):
        load(path)
