"""DKIM and ARC with dkimpy, over looked-up keys handed in (vsmtp/auth/dkim.py, arc.py):
signatures made and checked, each way a signature can fail, l=, over-signing, ARC chains."""

from __future__ import annotations

import itertools
import re
import time

import dkim as dkimpy
import pytest
from dkim.canonicalization import Relaxed, Simple
from hypothesis import given, settings
from hypothesis import strategies as st

from vsmtp.auth import arc, dkim
from vsmtp.auth.dkim import KeyState, Signer
from vsmtp.auth.results import authentication_results

from .conftest import Key

MESSAGE = (
    b"From: Alice <alice@signed.test>\r\nTo: bob@example.org\r\nSubject: hello\r\n"
    b"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\nHello Bob.\r\n"
)


def published(*keys: Key) -> dict[str, bytes | str]:
    return {f"{k.selector}._domainkey.{k.domain}": k.record.encode() for k in keys}


def signer(*keys: Key) -> Signer:
    return Signer([k.secret for k in keys], headers=("from", "to", "subject", "date"), oversign=("from", "subject", "to"))


def test_rsa_and_ed25519_signatures_verify_and_both_are_reported(keys: dict[str, Key]) -> None:
    rsa, ed = keys["SIGNED_RSA"], keys["SIGNED_ED"]
    signed = signer(rsa, ed).sign(MESSAGE, "signed.test") + MESSAGE
    assert signed.count(b"DKIM-Signature:") == 2
    result = dkim.verify(signed, published(rsa, ed))
    assert [(s.result, s.algorithm, s.selector) for s in result.signatures] == [
        ("pass", "ed25519-sha256", "ed"),
        ("pass", "rsa-sha256", "sel"),
    ]
    assert result.result == "pass" and result.domains() == ["signed.test", "signed.test"]


def test_a_changed_body_a_missing_key_and_an_unanswered_lookup(keys: dict[str, Key]) -> None:
    rsa = keys["SIGNED_RSA"]
    signed = signer(rsa).sign(MESSAGE, "signed.test") + MESSAGE
    changed = dkim.verify(signed.replace(b"Hello Bob.", b"Hello Eve."), published(rsa))
    assert (changed.signatures[0].result, changed.signatures[0].reason) == ("fail", "body hash mismatch")
    missing = dkim.verify(signed, {"sel._domainkey.signed.test": KeyState.ABSENT})
    assert missing.signatures[0].result == "permerror" and "no key" in missing.signatures[0].reason
    unanswered = dkim.verify(signed, {"sel._domainkey.signed.test": KeyState.TEMPORARY})
    assert unanswered.signatures[0].result == "temperror"
    header = dkim.verify(signed.replace(b"Subject: hello", b"Subject: changed"), published(rsa))
    assert header.signatures[0].result == "fail" and header.result == "fail"


def test_an_rsa_sha1_signature_is_not_accepted(keys: dict[str, Key]) -> None:
    rsa = keys["SIGNED_RSA"]
    field = dkimpy.DKIM(MESSAGE).sign(b"sel", b"signed.test", rsa.secret.secret, signature_algorithm=b"rsa-sha1", include_headers=[b"from"])
    [sig] = dkim.verify(field + MESSAGE, published(rsa)).signatures
    assert (sig.result, sig.reason) == ("policy", "rsa-sha1 is not accepted (RFC 8301)")


def test_over_signed_headers_cannot_be_added(keys: dict[str, Key]) -> None:
    rsa = keys["SIGNED_RSA"]
    signed = signer(rsa).sign(MESSAGE, "signed.test") + MESSAGE
    assert b"h=from : from : to : to : subject : subject : date" in signed.replace(b"\r\n ", b" ")
    added = signed.replace(b"Subject: hello\r\n", b"Subject: hello\r\nSubject: buy now\r\n")
    assert dkim.verify(added, published(rsa)).signatures[0].result == "fail"


def test_l_passes_what_it_covers_and_says_what_it_does_not(keys: dict[str, Key]) -> None:
    rsa = keys["SIGNED_RSA"]
    field = dkimpy.DKIM(MESSAGE).sign(
        b"sel", b"signed.test", rsa.secret.secret, include_headers=[b"from", b"subject"], canonicalize=(b"relaxed", b"relaxed"), length=True
    )
    appended = field + MESSAGE + b"Buy cheap watches at example.net\r\n"
    [sig] = dkim.verify(appended, published(rsa)).signatures
    assert sig.result == "pass" and sig.body_length == len(b"Hello Bob.\r\n") and sig.unsigned_bytes > 0
    assert "not" in sig.reason


def test_keys_named_by_signatures_and_seals(keys: dict[str, Key]) -> None:
    rsa = keys["SIGNED_RSA"]
    signed = signer(rsa).sign(MESSAGE, "signed.test") + MESSAGE
    assert dkim.key_names(signed) == ["sel._domainkey.signed.test"]
    assert dkim.key_names(MESSAGE) == []


def test_only_the_from_domain_and_its_subdomains_are_signed(keys: dict[str, Key]) -> None:
    ours = signer(keys["OURS_RSA"])
    assert ours.sign(MESSAGE, "signed.test") == b""
    assert ours.sign(MESSAGE, "mail.ours.test").startswith(b"DKIM-Signature:")


def test_an_arc_chain_verifies_and_a_change_after_the_seal_breaks_it(keys: dict[str, Key]) -> None:
    forwarder = keys["FORWARDER"]
    rsa = keys["SIGNED_RSA"]
    original = signer(rsa).sign(MESSAGE, "signed.test") + MESSAGE
    received = authentication_results("mx.fwd.test", dkim=dkim.verify(original, published(rsa))) + original
    sealed = arc.seal(received, forwarder.secret, authserv_id="mx.fwd.test", now=int(time.time())) + received
    assert sealed.startswith(b"ARC-Seal:") and b"cv=none" in sealed.split(b"\r\n\r\n")[0].replace(b"\r\n\t", b" ")
    # The forwarder (a mailing list) changed nothing after sealing: the chain holds.
    chain = arc.verify(sealed, published(forwarder, rsa))
    assert (chain.result, chain.sealers) == ("pass", ("fwd.test",))
    broken = arc.verify(sealed.replace(b"Hello Bob.", b"Hello Bob. [list footer]"), published(forwarder, rsa))
    assert broken.result == "fail"
    assert arc.verify(MESSAGE, {}).result == "none"


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_keygen_writes_keys_that_sign_and_records_that_verify(algorithm: str, tmp_path: object) -> None:
    pem, record = dkim.generate(algorithm)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----") and record.startswith("v=DKIM1; k=")
    line = dkim.zone_line("s._domainkey.example.org", "x" * 600)
    assert line.count('"') == 6  # three strings of at most 255 octets


# -- the body hashed as it streams ------------------------------------------------------

_BODY_PIECES = st.lists(st.sampled_from([b"a", b"b c", b" ", b"\t", b"  \t", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"."]), max_size=40)


@settings(max_examples=500, deadline=None)
@given(pieces=_BODY_PIECES, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_the_streamed_canonical_body_is_dkimpys_whole_one(pieces: list[bytes], cuts: list[int]) -> None:
    """Simple and relaxed, cut anywhere (a CRLF split between two reads included): the same
    octets as dkimpy's canonicalization of the body whole, as its parser sees it."""
    body = b"".join(pieces)
    whole = b"\r\n".join(re.split(rb"\r?\n", body))  # what dkimpy's rfc822_parse makes of it
    bounds = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    split = [body[a:b] for a, b in itertools.pairwise(bounds)]
    for relaxed, algorithm in ((False, Simple), (True, Relaxed)):
        seen = Collect()
        stream = dkim._Canonical(relaxed, [seen])  # type: ignore[list-item]
        for piece in split:
            stream.feed(piece)
        stream.end()
        assert b"".join(seen.data) == algorithm.canonicalize_body(whole), (relaxed, body, split)


class Collect:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def update(self, data: bytes) -> None:
        self.data.append(data)


@pytest.mark.parametrize("canonicalize", [(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")])
def test_a_large_body_given_in_pieces_verifies_and_a_change_in_it_fails(keys: dict[str, Key], canonicalize: tuple[bytes, bytes]) -> None:
    rsa = keys["SIGNED_RSA"]
    body = b"".join(b"line %d with  trailing space \t\r\n" % n for n in range(100_000)) + b"\r\n\r\n"  # about 3.5 MB
    message = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
    secret = rsa.secret.secret
    field = dkimpy.DKIM(message).sign(b"sel", b"signed.test", secret, include_headers=[b"from", b"subject"], canonicalize=canonicalize)
    head = field + MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n"
    parts = [body[i : i + 65_537] for i in range(0, len(body), 65_537)]  # cut mid-line, mid-CRLF
    [sig] = dkim.verify_parts(head, iter(parts), published(rsa)).signatures
    assert sig.result == "pass", sig.reason
    [whole] = dkim.verify(head + b"\r\n" + body, published(rsa)).signatures
    assert whole.result == "pass"
    parts[20] = parts[20].replace(b"line", b"LINE", 1)
    [changed] = dkim.verify_parts(head, iter(parts), published(rsa)).signatures
    assert (changed.result, changed.reason) == ("fail", "body hash mismatch")
