"""DKIM (RFC 6376, ed25519 RFC 8463) with dkimpy: every signature of a message verified,
and messages signed with the configured keys.

Verification is split so that no DNS question is asked here: `key_names` lists the key
records a message's signatures need (its DKIM-Signature, ARC-Seal and ARC-Message-Signature
fields); the caller looks them up on trio (net/dns.py) and hands the answers to `verify`,
which runs dkimpy (blocking: in a worker thread). The message is parsed once and each
signature's body hash is computed from that one parse.

rsa-sha1 signatures are not accepted (RFC 8301 3.1): their result is policy.

l= (RFC 6376 3.5, 8.2): a signature that covers only the first octets of the body passes
when they match, and says how many octets it leaves unsigned (`unsigned_bytes`, and a note
in `reason`), so that rules can treat such content as unauthenticated.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.crypto import HASH_ALGORITHMS
from dkim.util import InvalidTagValueList, parse_tag_value

from ..config import SigningKeyConfig
from ..errors import ConfigError
from .results import DkimResult, DkimSignature, DkimStatus

_quiet = logging.getLogger("vsmtp.auth.dkimpy")  # dkimpy logs every failure as an error: ours are results
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False

SIGNATURE_FIELDS = (b"dkim-signature", b"arc-seal", b"arc-message-signature")


class KeyState:
    """What a key lookup found, when it found no key."""

    ABSENT = "absent"  # NXDOMAIN or no TXT record: the signature cannot verify (permerror)
    TEMPORARY = "temporary"  # no answer now (temperror)


Keys = Mapping[str, bytes | str]  # key record name -> its TXT text, or a KeyState


def key_names(message: bytes, *, fields: Sequence[bytes] = SIGNATURE_FIELDS) -> list[str]:
    """The DNS names of the keys the message's signatures ask for (s._domainkey.d), in order,
    each once. Signatures that do not parse name no key (verify reports them)."""
    names: dict[str, None] = {}
    for name, value in _headers(message):
        if name.lower() not in fields:
            continue
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList:
            continue
        selector, domain = tags.get(b"s"), tags.get(b"d")
        if selector and domain:
            names[_key_name(selector, domain)] = None
    return list(names)


def verify(message: bytes, keys: Keys) -> DkimResult:
    """Every DKIM-Signature of `message`, top first, checked with the looked-up `keys`."""
    lines = re.split(rb"\r?\n", message)
    blank = next((i for i, line in enumerate(lines) if not line), len(lines))
    head = b"".join(line + b"\r\n" for line in lines[:blank])
    return verify_parts(head, [b"\r\n".join(lines[blank + 1 :])], keys)


def verify_parts(head: bytes, body: Iterable[bytes], keys: Keys) -> DkimResult:
    """verify, for a message given as its header section and its body in pieces (a large
    message, partly in a spill file): the body is read once, whatever the signatures, and
    hashed as it streams; it is never joined or copied whole."""
    parsed = dkim.DKIM(head + b"\r\n", logger=_quiet, minkey=1024)
    count = sum(1 for name, _ in parsed.headers if name.lower() == b"dkim-signature")
    checks = [_prepare(parsed, index, keys) for index in range(count)]
    hashing = [c for c in checks if isinstance(c, _Pending)]
    if hashing:
        streams = {
            relaxed: _Canonical(relaxed, [c.hash for c in hashing if c.relaxed == relaxed]) for relaxed in {c.relaxed for c in hashing}
        }
        for piece in body:
            for stream in streams.values():
                stream.feed(piece)
        for stream in streams.values():
            stream.end()
    return DkimResult(signatures=tuple(c if isinstance(c, DkimSignature) else _finish(parsed, c) for c in checks))


@dataclass(slots=True)
class _Pending:
    """A signature whose header and key are in order: what is left is its body hash."""

    found: DkimSignature
    index: int
    sig: dict[bytes, bytes]
    include_headers: list[bytes]
    sig_list: list[object]
    relaxed: bool
    expected: bytes
    hash: _BodyHash
    key: tuple[Any, ...]  # what dkimpy made of the key record (pk, keysize, ktag, seqtlsrpt)


def _prepare(parsed: dkim.DKIM, index: int, keys: Keys) -> DkimSignature | _Pending:
    sig_headers = [(n, v) for n, v in parsed.headers if n.lower() == b"dkim-signature"]
    try:
        tags = parse_tag_value(sig_headers[index][1])
    except InvalidTagValueList as exc:
        return DkimSignature(result="permerror", domain="", selector="", reason=f"signature does not parse: {exc}")
    domain, selector = _text(tags.get(b"d", b"")), _text(tags.get(b"s", b""))
    found = DkimSignature(
        result="permerror",
        domain=domain.lower(),
        selector=selector,
        algorithm=_text(tags.get(b"a", b"")),
        identity=_text(tags.get(b"i", b"")),
        b=re.sub(r"\s+", "", _text(tags.get(b"b", b"")))[:8],
    )
    try:
        prep = parsed.verify_headerprep(index)
    except (dkim.MessageFormatError, dkim.ValidationError) as exc:
        return _with(found, "permerror", str(exc))
    assert prep, "the signature is there"
    sig, include_headers, sig_list = prep
    if sig.get(b"a", b"").lower() == b"rsa-sha1":
        return _with(found, "policy", "rsa-sha1 is not accepted (RFC 8301)")
    name = _key_name(sig[b"s"], sig[b"d"])
    record = keys.get(name, KeyState.TEMPORARY)
    if record == KeyState.ABSENT:
        return _with(found, "permerror", f"no key at {name}")
    if record == KeyState.TEMPORARY or isinstance(record, str):
        return _with(found, "temperror", f"key {name} could not be looked up")
    try:
        parsed.pk, parsed.keysize, parsed.ktag, parsed.seqtlsrpt = dkim.evaluate_pk(name.encode(), record)
    except (dkim.KeyFormatError, ValueError, IndexError) as exc:
        return _with(found, "permerror", f"key {name}: {exc or 'unusable'}")
    key = (parsed.pk, parsed.keysize, parsed.ktag, parsed.seqtlsrpt)
    try:
        canon = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError as exc:
        return _with(found, "permerror", f"invalid c= value: {exc}")
    try:
        expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
    except ValueError as exc:
        return _with(found, "permerror", f"bh= does not decode: {exc}")
    hasher = HASH_ALGORITHMS.get(sig[b"a"].lower())
    if hasher is None:
        return _with(found, "permerror", f"unknown algorithm {_text(sig[b'a'])}")
    limit = int(sig[b"l"]) if b"l" in sig and sig[b"l"].isdigit() else None
    return _Pending(
        found=found,
        index=index,
        sig=sig,
        include_headers=include_headers,
        sig_list=sig_list,
        relaxed=canon.body_algorithm.name == b"relaxed",
        expected=expected,
        hash=_BodyHash(hasher(), limit),
        key=key,
    )


def _finish(parsed: dkim.DKIM, check: _Pending) -> DkimSignature:
    found, sig, body = check.found, check.sig, check.hash
    if body.digest() != check.expected:
        return _with(found, "fail", "body hash mismatch")
    parsed.pk, parsed.keysize, parsed.ktag, parsed.seqtlsrpt = check.key  # each signature its own key
    try:
        # The body is checked: what is left is the header hash and the signature over it.
        ok = parsed.verify_sig_process(
            {k: v for k, v in sig.items() if k != b"bh"}, check.include_headers, check.sig_list[check.index], None
        )
    except dkim.DKIMException as exc:
        return _with(found, "permerror", str(exc))
    if not ok:
        return _with(found, "fail", "signature did not verify")
    signed = int(sig[b"l"]) if body.limit is not None else body.length
    unsigned = max(0, body.length - signed)
    if unsigned:
        note = f"only the first {signed} octets of the body are signed (l=); {unsigned} are not"
        return replace(found, result="pass", body_length=signed, unsigned_bytes=unsigned, reason=note)
    return replace(found, result="pass", reason="", body_length=signed if b"l" in sig else None)


class _BodyHash:
    """One signature's body hash, over at most `limit` octets of the canonical body (l=)."""

    def __init__(self, hasher: Any, limit: int | None) -> None:
        self._hasher = hasher
        self.limit = limit
        self._left = limit
        self.length = 0  # octets of the canonical body

    def update(self, data: bytes) -> None:
        self.length += len(data)
        if self._left is not None:
            data = data[: self._left]
            self._left -= len(data)
        self._hasher.update(data)

    def digest(self) -> bytes:
        return bytes(self._hasher.digest())


_LINE_END = re.compile(rb"\r?\n")
_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_WSP = re.compile(rb"[\t ]+")
_WSP_TO_CHANGE = re.compile(rb"[ \t]*\t[ \t]*| {2,}")  # the runs [\t ]+ -> " " changes: not a lone space


class _Canonical:
    """The body canonicalized as it streams (RFC 6376 3.4.3 simple, 3.4.4 relaxed), exactly
    as dkimpy does it whole: CR LF or LF ends a line, and the empty lines at the end are
    held back until a line with content shows they were not the end."""

    def __init__(self, relaxed: bool, sinks: list[_BodyHash]) -> None:
        self.relaxed = relaxed
        self.sinks = sinks
        self._carry = b""  # the line not yet ended
        self._empty = 0  # empty lines held back
        self._emitted = False

    def feed(self, piece: bytes) -> None:
        data = self._carry + piece
        cut = data.rfind(b"\n") + 1
        self._carry = data[cut:]
        if not cut:
            return
        lines = data[:cut]
        # Each rewrite only where it changes something: a body received over SMTP has CRLF
        # line ends already, and most have no tabs, runs of spaces or trailing spaces.
        if lines.count(b"\n") != lines.count(b"\r\n"):
            lines = _LINE_END.sub(b"\r\n", lines)
        if self.relaxed:
            if b" \r\n" in lines or b"\t\r\n" in lines:
                lines = _TRAILING_WSP.sub(b"\r\n", lines)
            if b"\t" in lines or b"  " in lines:
                lines = _WSP_TO_CHANGE.sub(b" ", lines)
        end = len(lines)
        while lines.endswith(b"\r\n", 0, end):
            end -= 2
        trailing = (len(lines) - end) // 2  # CRLFs at its end: the last line's, and empty lines
        if end:
            self._emit(b"\r\n" * self._empty + lines[:end] + b"\r\n")
            self._empty = trailing - 1
        else:
            self._empty += trailing

    def end(self) -> None:
        last = _WSP.sub(b" ", self._carry) if self.relaxed else self._carry
        if last:
            self._emit(b"\r\n" * self._empty + last + b"\r\n")
        elif not self._emitted and not self.relaxed:
            self._emit(b"\r\n")  # simple: an empty body is one CRLF; relaxed: nothing

    def _emit(self, data: bytes) -> None:
        self._emitted = True
        for sink in self.sinks:
            sink.update(data)


def _with(sig: DkimSignature, result: DkimStatus, reason: str) -> DkimSignature:
    return replace(sig, result=result, reason=reason)


def _key_name(selector: bytes, domain: bytes) -> str:
    return f"{_text(selector)}._domainkey.{_text(domain)}".lower()


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").strip()


def _headers(message: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields (name, value), parsed from the header section alone."""
    end = message.find(b"\r\n\r\n")
    headers, _ = dkim.rfc822_parse(message if end < 0 else message[: end + 4])
    return list(headers)


# -- signing -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: str  # rsa-sha256 or ed25519-sha256
    secret: bytes  # as dkimpy takes it: PEM for RSA, base64 of the 32-octet seed for ed25519

    @classmethod
    def load(cls, config: SigningKeyConfig) -> SigningKey:
        """Read the key file; ConfigError naming it when it cannot be read or is not the
        algorithm's kind of key (never a silent unsigned message)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

        try:
            data = Path(config.key).read_bytes()
            key = serialization.load_pem_private_key(data, password=None)
        except OSError as exc:
            raise ConfigError(f"DKIM key {config.key} ({config.domain}, selector {config.selector}): cannot read: {exc.strerror}") from exc
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"DKIM key {config.key}: not a PEM private key without a passphrase: {exc}") from exc
        if config.algorithm == "ed25519-sha256":
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise ConfigError(f"DKIM key {config.key}: algorithm ed25519-sha256 needs an Ed25519 key")
            seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
            secret = base64.b64encode(seed)
        else:
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ConfigError(f"DKIM key {config.key}: algorithm rsa-sha256 needs an RSA key")
            if key.key_size < 1024:
                raise ConfigError(f"DKIM key {config.key}: {key.key_size}-bit RSA is too small (RFC 8301: 1024 at least; use 2048)")
            secret = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return cls(domain=config.domain.lower().rstrip("."), selector=config.selector, algorithm=config.algorithm, secret=secret)


class Signer:
    """Signs a message with every configured key whose domain is its From domain (or a parent
    of it), relaxed/relaxed, over `headers` as present, with `oversign` signed once more than
    present so that none can be added."""

    def __init__(self, keys: Sequence[SigningKey], *, headers: Sequence[str], oversign: Sequence[str]) -> None:
        self.keys = tuple(keys)
        self.headers = tuple(h.lower() for h in headers)
        self.oversign = frozenset(h.lower() for h in oversign)

    def keys_for(self, from_domain: str) -> list[SigningKey]:
        domain = from_domain.lower().rstrip(".")
        return [k for k in self.keys if domain == k.domain or domain.endswith("." + k.domain)]

    def sign(self, message: bytes, from_domain: str) -> bytes:
        """The DKIM-Signature fields to prepend (b"" when no key signs for `from_domain`)."""
        keys = self.keys_for(from_domain)
        if not keys:
            return b""
        present = [name.lower() for name, _ in _headers(message)]
        include = []
        for name in self.headers:
            times = present.count(name.encode()) + (1 if name in self.oversign else 0)
            include += [name.encode()] * times
        if b"from" not in include:
            include.append(b"from")  # RFC 6376 5.4: From is always signed
        fields = []
        for key in keys:
            signer = dkim.DKIM(message, logger=_quiet, linesep=b"\r\n")
            fields.append(
                signer.sign(
                    key.selector.encode(),
                    key.domain.encode(),
                    key.secret,
                    signature_algorithm=key.algorithm.encode(),
                    canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=include,
                )
            )
        return b"".join(reversed(fields))  # the last key's on top: each covers the message as it was given


def generate(algorithm: str, *, bits: int = 2048) -> tuple[bytes, str]:
    """A new private key (PEM, PKCS#8) and the TXT record to publish at
    SELECTOR._domainkey.DOMAIN for it (RFC 6376 3.6.1, ed25519 per RFC 8463 4.2)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if algorithm == "ed25519-sha256":
        key = ed25519.Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        record = f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return pem, record
    if bits < 1024:
        raise ValueError("RSA keys of less than 1024 bits are refused by verifiers (RFC 8301); use 2048")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = rsa_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def zone_line(name: str, record: str) -> str:
    """The record as a zone-file line, cut into strings of at most 255 octets (RFC 1035)."""
    strings = " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))
    return f"{name}. IN TXT ( {strings} )"
