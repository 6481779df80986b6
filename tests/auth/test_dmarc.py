"""DMARC's pure parts (vsmtp/auth/dmarc.py): records, organizational domains, alignment,
the policy that applies (p, sp, np, pct), several From domains, the ARC override."""

from __future__ import annotations

import pytest

from vsmtp.auth import dmarc
from vsmtp.auth.results import ArcResult, DkimResult, DkimSignature, SpfResult


def spf(domain: str, result: str = "pass") -> SpfResult:
    return SpfResult(result=result, identity="mailfrom", domain=domain, sender=f"a@{domain}", helo="h", client="192.0.2.1")  # type: ignore[arg-type]


def dkim(*domains: str) -> DkimResult:
    return DkimResult(signatures=tuple(DkimSignature(result="pass", domain=d, selector="s") for d in domains))


@pytest.mark.parametrize(
    ("domain", "organizational"),
    [("mail.example.co.uk", "example.co.uk"), ("a.b.example.com", "example.com"), ("example.org", "example.org"), ("x.y.test", "y.test")],
)
def test_organizational_domain_comes_from_the_public_suffix_list(domain: str, organizational: str) -> None:
    assert dmarc.organizational_domain(domain) == organizational


def test_a_record_is_found_among_txt_records_and_several_count_as_none() -> None:
    assert dmarc.parse_record([b"v=spf1 -all", b"v=DMARC1; p=reject; pct=50"]) == {"v": "DMARC1", "p": "reject", "pct": "50"}
    assert dmarc.parse_record([b"v=DMARC1; p=none", b"v=DMARC1; p=reject"]) is None  # RFC 7489 6.6.3
    assert dmarc.parse_record([b"v=DMARC1; p=bogus"]) is None
    assert dmarc.parse_record([b"v=DMARC1; rua=mailto:r@example.org"]) == {"v": "DMARC1", "rua": "mailto:r@example.org", "p": "none"}


def test_alignment_relaxed_and_strict() -> None:
    assert dmarc.aligned("mail.example.org", "example.org", "r")
    assert not dmarc.aligned("mail.example.org", "example.org", "s")
    assert dmarc.aligned("Example.ORG.", "example.org", "s")
    assert not dmarc.aligned("example.net", "example.org", "r")


def test_pass_by_spf_alone_and_by_dkim_alone() -> None:
    policy = dmarc.Policy(domain="example.org", record={"p": "reject"})
    by_spf = dmarc.evaluate("example.org", policy, spf=spf("bounce.example.org"), dkim=dkim("other.net"))
    assert by_spf.result == "pass" and by_spf.spf_aligned and not by_spf.dkim_aligned
    by_dkim = dmarc.evaluate("example.org", policy, spf=spf("other.net"), dkim=dkim("example.org"))
    assert by_dkim.result == "pass" and by_dkim.dkim_aligned and not by_dkim.spf_aligned
    strict = dmarc.Policy(domain="example.org", record={"p": "reject", "aspf": "s"})
    assert dmarc.evaluate("example.org", strict, spf=spf("bounce.example.org"), dkim=None).result == "fail"


def test_the_policy_of_a_subdomain_and_of_a_domain_that_does_not_exist() -> None:
    record = {"p": "none", "sp": "reject", "np": "quarantine"}
    own = dmarc.evaluate("example.org", dmarc.Policy(domain="example.org", record=record), spf=None, dkim=None)
    sub = dmarc.evaluate("sub.example.org", dmarc.Policy(domain="example.org", record=record), spf=None, dkim=None)
    missing = dmarc.evaluate("nx.example.org", dmarc.Policy(domain="example.org", record=record, author_exists=False), spf=None, dkim=None)
    assert (own.disposition, sub.disposition, missing.disposition) == ("none", "reject", "quarantine")


def test_pct_samples_out_to_the_next_policy_down() -> None:
    policy = dmarc.Policy(domain="example.org", record={"p": "reject", "pct": "25"})
    assert dmarc.evaluate("example.org", policy, spf=None, dkim=None, sample=0.1).disposition == "reject"
    out = dmarc.evaluate("example.org", policy, spf=None, dkim=None, sample=0.9)
    assert out.disposition == "quarantine" and "pct=25" in out.reason


def test_the_strictest_of_several_from_domains_applies() -> None:
    mild = dmarc.evaluate("a.org", dmarc.Policy(domain="a.org", record={"p": "none"}), spf=None, dkim=None)
    harsh = dmarc.evaluate("b.org", dmarc.Policy(domain="b.org", record={"p": "reject"}), spf=None, dkim=None)
    assert dmarc.strictest([mild, harsh]) is harsh
    assert dmarc.from_domains(b"From: A <a@a.org>, b@B.org\r\nFrom: c@a.org\r\nTo: x@y\r\n\r\nbody") == ["a.org", "b.org"]
    assert dmarc.from_domains(b"To: x@y\r\n\r\nno From") == []


def test_a_trusted_sealer_lets_a_dmarc_fail_through() -> None:
    failed = dmarc.evaluate("example.org", dmarc.Policy(domain="example.org", record={"p": "reject"}), spf=None, dkim=None)
    chain = ArcResult(result="pass", sealers=("lists.example.net",))
    assert dmarc.arc_override(failed, chain, ["lists.example.net"]).disposition == "none"
    assert dmarc.arc_override(failed, chain, ["other.example"]).disposition == "reject"
    assert dmarc.arc_override(failed, ArcResult(result="fail", sealers=("lists.example.net",)), ["lists.example.net"]) is failed
