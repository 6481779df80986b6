"""net/dane.check: a certificate chain (as a server sends it) against TLSA records, with
certificates from trustme: DANE-EE by certificate or key and any matching type, without
name or date checks; DANE-TA by a certificate above the server's, with the chain's
signatures, the dates and the name checked."""

from __future__ import annotations

import datetime
import hashlib

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vsmtp.net.dane import Tlsa, check

DER = serialization.Encoding.DER


def chain(leaf: trustme.LeafCert) -> list[bytes]:
    return [x509.load_pem_x509_certificate(p.bytes()).public_bytes(DER) for p in leaf.cert_chain_pems]


def spki(der: bytes) -> bytes:
    key = x509.load_der_x509_certificate(der).public_key()
    return key.public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_dane_ee_matches_the_certificate_or_its_key_in_every_matching_type() -> None:
    [leaf] = chain(trustme.CA().issue_cert("anything.test"))
    names = ("mx.example.test",)  # DANE-EE checks no name
    for record in (
        Tlsa(3, 0, 0, leaf),
        Tlsa(3, 0, 1, hashlib.sha256(leaf).digest()),
        Tlsa(3, 1, 1, hashlib.sha256(spki(leaf)).digest()),
        Tlsa(3, 1, 2, hashlib.sha512(spki(leaf)).digest()),
    ):
        assert check([leaf], [record], names) == "", record
    assert check([leaf], [Tlsa(3, 1, 1, b"\0" * 32)], names) == "its certificate matches no DANE-EE record"
    assert check([], [Tlsa(3, 0, 0, leaf)], names) == "the server sent no certificate"


def test_dane_ee_ignores_dates_and_dane_ta_does_not() -> None:
    intermediate = trustme.CA().create_child_ca()
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    sent = chain(intermediate.issue_cert("mx.example.test", not_before=past, not_after=past + datetime.timedelta(days=1)))
    assert check(sent, [Tlsa(3, 1, 1, hashlib.sha256(spki(sent[0])).digest())], ("mx.example.test",)) == ""
    anchor = Tlsa(2, 0, 1, hashlib.sha256(sent[1]).digest())
    assert check(sent, [anchor], ("mx.example.test",)) == "its certificate is not valid now (DANE-TA)"


def test_dane_ta_needs_the_name_and_an_unbroken_chain() -> None:
    intermediate = trustme.CA().create_child_ca()
    sent = chain(intermediate.issue_cert("mx.example.test"))
    anchor = Tlsa(2, 1, 1, hashlib.sha256(spki(sent[1])).digest())
    assert check(sent, [anchor], ("mx.example.test",)) == ""
    assert check(sent, [anchor], ("other.example.test", "example.test")) == (
        "its certificate does not name other.example.test or example.test (DANE-TA)"
    )
    [stranger] = chain(trustme.CA().issue_cert("mx.example.test"))  # the same name, from another CA
    assert "chain to the DANE-TA certificate is broken" in check([stranger, sent[1]], [anchor], ("mx.example.test",))
    assert check(sent[:1], [anchor], ("mx.example.test",)) == "no certificate it sent matches a DANE-TA or DANE-EE record"


def test_records_smtp_does_not_use_are_unusable() -> None:
    assert [Tlsa(u, s, m, b"").usable for u, s, m in ((0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 1, 3), (2, 0, 0), (3, 1, 2))] == [
        False, False, False, False, True, True,
    ]  # fmt: skip


def test_dane_ta_finds_the_path_through_certificates_sent_out_of_order() -> None:
    top = trustme.CA().create_child_ca()
    sent = chain(top.create_child_ca().issue_cert("mx.example.test"))  # the server's, its issuer, then top
    anchor = Tlsa(2, 0, 1, hashlib.sha256(sent[2]).digest())
    assert check(sent, [anchor], ("mx.example.test",)) == ""
    assert check([sent[0], sent[2], sent[1]], [anchor], ("mx.example.test",)) == ""  # unordered: still found
    assert "is broken at" in check([sent[0], sent[2]], [anchor], ("mx.example.test",))  # the middle one missing
