"""Outbound TLS security levels (net/tlspolicy.py) against a receiving server with a trustme
certificate: the smarthost is verified by default, refused when its CA is not trusted or its
certificate names another host, and its password never reaches a server not verified."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trustme

from vsmtp.config import Config, RelayhostConfig, load
from vsmtp.errors import ConfigError
from vsmtp.net import tlspolicy
from vsmtp.queue import events as qe

from ..conftest import sendmail, wait_journal, with_changes
from .conftest import ca_file, server_tls
from .test_delivery import MESSAGE

CREDENTIALS = ("relayuser", "s3cret")


async def deferral(running: Any) -> qe.DeliveryDeferred:
    records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliveryDeferred.TAG for r in rs), timeout=15)
    return next(e for e in map(qe.decode, records) if isinstance(e, qe.DeliveryDeferred))


async def test_a_smarthost_whose_ca_is_not_trusted_gets_no_password_and_no_mail(
    start_server: Any, sender: Config, start_sink: Any, port: int, ca: trustme.CA
) -> None:
    smarthost = await start_sink("127.0.0.8", tls=server_tls(ca, "127.0.0.8"), auth=CREDENTIALS)
    relay = RelayhostConfig(url=f"smtp://127.0.0.8:{port}", username=CREDENTIALS[0], password=CREDENTIALS[1])  # tls: verify, system CAs
    running = await start_server(with_changes(sender, relayhost=relay))
    await sendmail(running, "a@example.org", ["someone@far.test"], MESSAGE)
    deferred = await deferral(running)
    assert deferred.stage == "tls" and "is not verified (level verify)" in deferred.reason, deferred.reason
    assert smarthost.auth_attempts == 0 and smarthost.received == []  # seen from the receiving side


async def test_a_smarthost_with_its_ca_configured_is_verified_and_gets_the_mail(
    start_server: Any, sender: Config, start_sink: Any, port: int, ca: trustme.CA
) -> None:
    smarthost = await start_sink("127.0.0.8", tls=server_tls(ca, "127.0.0.8"), auth=CREDENTIALS)
    relay = RelayhostConfig(url=f"smtp://127.0.0.8:{port}", username=CREDENTIALS[0], password=CREDENTIALS[1], ca=ca_file(ca, sender))
    running = await start_server(with_changes(sender, relayhost=relay))
    await sendmail(running, "a@example.org", ["someone@far.test"], MESSAGE)
    records = await wait_journal(running, lambda rs: any(r.tag == qe.DeliverySucceeded.TAG for r in rs), timeout=15)
    assert not any(r.tag == qe.DeliveryDeferred.TAG for r in records)
    assert [(m.tls, m.user) for m in smarthost.received] == [(True, "relayuser")]


async def test_verify_with_a_certificate_for_another_name_defers(
    start_server: Any, sender: Config, start_sink: Any, port: int, ca: trustme.CA
) -> None:
    smarthost = await start_sink("127.0.0.8", tls=server_tls(ca, "other.test"), auth=CREDENTIALS)
    relay = RelayhostConfig(url=f"smtp://127.0.0.8:{port}", username=CREDENTIALS[0], password=CREDENTIALS[1], ca=ca_file(ca, sender))
    running = await start_server(with_changes(sender, relayhost=relay))
    await sendmail(running, "a@example.org", ["someone@far.test"], MESSAGE)
    deferred = await deferral(running)
    assert "does not name 127.0.0.8 (level verify)" in deferred.reason and deferred.stage == "tls"
    assert smarthost.auth_attempts == 0 and smarthost.received == []


@pytest.mark.parametrize(("level", "name", "delivered"), [("verify", "mx1.far.test", True), ("secure", "mx1.far.test", True),
                                                          ("secure", "mx.elsewhere.test", False), ("verify", "mx2.far.test", False),
                                                          ("encrypt", "anything.test", True)])  # fmt: skip
async def test_mx_delivery_at_each_level(
    start_server: Any, sender: Config, start_sink: Any, ca: trustme.CA, level: str, name: str, delivered: bool
) -> None:
    await start_sink("127.0.0.2", tls=server_tls(ca, name))  # far.test's first MX, mx1.far.test
    policy = {"tls_policy": {"far.test": level}, "tls_ca": ca_file(ca, sender), "retry_first": 60.0}
    running = await start_server(with_changes(sender, delivery=policy))
    await sendmail(running, "a@example.org", ["user@far.test"], MESSAGE)
    tags = (qe.DeliverySucceeded.TAG, qe.DeliveryDeferred.TAG)
    records = await wait_journal(running, lambda rs: any(r.tag in tags for r in rs), timeout=15)
    [outcome] = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliverySucceeded | qe.DeliveryDeferred)]
    assert isinstance(outcome, qe.DeliverySucceeded) is delivered, outcome
    if not delivered:  # mx2.far.test (127.0.0.3) does not listen: the reason is the first host's
        attempted = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliveryAttempted)]
        assert "does not name" in attempted[0].reply


async def test_level_none_never_starts_tls(start_server: Any, sender: Config, start_sink: Any, ca: trustme.CA) -> None:
    sink = await start_sink("127.0.0.2", tls=server_tls(ca, "mx1.far.test"))
    running = await start_server(with_changes(sender, delivery={"tls_policy": {"far.test": "none"}}))
    await sendmail(running, "a@example.org", ["user@far.test"], MESSAGE)
    await wait_journal(running, lambda rs: any(r.tag == qe.DeliverySucceeded.TAG for r in rs), timeout=15)
    assert [m.tls for m in sink.received] == [False]


def test_credentials_need_a_verified_level_in_the_configuration(tmp_path: Any) -> None:
    path = tmp_path / "vsmtp.toml"
    path.write_text('[relayhost]\nurl = "smtp://relay.example:587"\nusername = "u"\npassword = "p"\ntls = "encrypt"\n')
    with pytest.raises(ConfigError, match=r"line 5: relayhost.tls: credentials go only to a verified server"):
        load(path)
    path.write_text('[delivery]\ntls_policy = { "example.com" = "sometimes" }\n')
    with pytest.raises(ConfigError, match=r"delivery\.tls_policy\.example\.com: expected one of none, may, encrypt, verify, secure"):
        load(path)


def test_names_are_matched_as_rfc_6125_says() -> None:
    cert = {"subjectAltName": (("DNS", "*.example.com"), ("DNS", "mail.example.net"), ("IP Address", "192.0.2.7"))}
    assert tlspolicy.matches(cert, ("mx.example.com",)) and tlspolicy.matches(cert, ("MAIL.example.net.",))
    assert not tlspolicy.matches(cert, ("a.b.example.com",)) and not tlspolicy.matches(cert, ("example.com",))
    assert tlspolicy.matches(cert, ("192.0.2.7",)) and not tlspolicy.matches(cert, ("192.0.2.8",))
    assert tlspolicy.matches(cert, ("example.com", ".example.com"))  # secure: a host under the domain
    assert not tlspolicy.matches({"subjectAltName": (("DNS", "example.com.evil.test"),)}, ("example.com", ".example.com"))
    assert tlspolicy.matches({"subject": ((("commonName", "mx.example.org"),),)}, ("mx.example.org",))  # no SAN: the CN


def test_outbound_handshakes_offer_no_session_tickets() -> None:
    assert all(tlspolicy.context("", verified).options & ssl.OP_NO_TICKET for verified in (True, False))


RULE_LEVELS = """
from vsmtp.rules import *

@rule.delivery
def bank_verified(ctx):
    if ctx.recipient.endswith("@far.test"):
        ctx.set_route(ctx.recipient, "smtp", tls="verify")  # as Postfix's smtp_tls_policy_maps, chosen per message
"""


@pytest.mark.parametrize(("name", "delivered"), [("mx1.far.test", True), ("someone-else.test", False)])
async def test_a_delivery_rule_sets_the_level_of_a_route(
    start_server: Any, sender: Config, start_sink: Any, ca: trustme.CA, tmp_path: Any, name: str, delivered: bool
) -> None:
    sink = await start_sink("127.0.0.2", tls=server_tls(ca, name))  # with no rule: may, delivered whatever the name
    (tmp_path / "rules.py").write_text(RULE_LEVELS)
    changes = {"tls_ca": ca_file(ca, sender), "retry_first": 60.0}
    running = await start_server(with_changes(sender, rules=str(tmp_path / "rules.py"), delivery=changes))
    await sendmail(running, "a@example.org", ["user@far.test"], MESSAGE)
    tags = (qe.DeliverySucceeded.TAG, qe.DeliveryDeferred.TAG)
    records = await wait_journal(running, lambda rs: any(r.tag in tags for r in rs), timeout=15)
    [outcome] = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliverySucceeded | qe.DeliveryDeferred)]
    assert isinstance(outcome, qe.DeliverySucceeded) is delivered, outcome
    if not delivered:  # the reason is the last host's (mx2.far.test does not listen); mx1's is in its attempt
        [first] = [e for e in map(qe.decode, records) if isinstance(e, qe.DeliveryAttempted) and e.host == "mx1.far.test"]
        assert "does not name mx1.far.test (level verify)" in first.reply and first.tls_result == "certificate-host-mismatch"
        assert sink.received == []
    [action] = [r.payload for r in records if r.tag == "rule.action"]
    assert action["args"] == ["user@far.test", "smtp", "verify"]


def test_a_rule_level_is_checked_when_given() -> None:
    from vsmtp.queue import policy

    for route, tls, why in (
        ("maildir", "verify", "a TLS level is for the smtp routes"),
        ("smtp:[192.0.2.1]:25", "dane", "DANE is for a domain's MX hosts"),
        ("smtp", "sure", "expected one of none, may"),
    ):
        with pytest.raises(ValueError, match=why):
            policy.check_route_level(route, tls)
