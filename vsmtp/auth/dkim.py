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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

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
    parsed = dkim.DKIM(message, logger=_quiet, minkey=1024)
    count = sum(1 for name, _ in parsed.headers if name.lower() == b"dkim-signature")
    bodies: dict[bytes, bytes] = {}  # body canonicalization -> the body in it: computed once, whatever the signatures
    return DkimResult(signatures=tuple(_one(parsed, index, keys, bodies) for index in range(count)))


def _one(parsed: dkim.DKIM, index: int, keys: Keys, bodies: dict[bytes, bytes]) -> DkimSignature:
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
    try:
        canon = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError as exc:
        return _with(found, "permerror", f"invalid c= value: {exc}")
    algorithm = canon.body_algorithm.name
    if algorithm not in bodies:
        bodies[algorithm] = canon.canonicalize_body(parsed.body)
    body = bodies[algorithm]
    signed = int(sig[b"l"]) if b"l" in sig and sig[b"l"].isdigit() else len(body)
    try:
        expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
    except ValueError as exc:
        return _with(found, "permerror", f"bh= does not decode: {exc}")
    hasher = HASH_ALGORITHMS.get(sig[b"a"].lower())
    if hasher is None:
        return _with(found, "permerror", f"unknown algorithm {_text(sig[b'a'])}")
    if hasher(body[:signed]).digest() != expected:
        return _with(found, "fail", "body hash mismatch")
    try:
        # The body is checked: what is left is the header hash and the signature over it.
        ok = parsed.verify_sig_process({k: v for k, v in sig.items() if k != b"bh"}, include_headers, sig_list[index], None)
    except dkim.DKIMException as exc:
        return _with(found, "permerror", str(exc))
    if not ok:
        return _with(found, "fail", "signature did not verify")
    unsigned = max(0, len(body) - signed)
    if unsigned:
        note = f"only the first {signed} octets of the body are signed (l=); {unsigned} are not"
        return replace(found, result="pass", body_length=signed, unsigned_bytes=unsigned, reason=note)
    return replace(found, result="pass", reason="", body_length=signed if b"l" in sig else None)


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
