"""DANE for SMTP (RFC 7672; TLSA records RFC 6698, RFC 7671): which MX hosts of a
destination must be authenticated by their TLSA records, and whether a server's
certificate chain matches them.

Before connecting (plan), with a validating resolver (`dns.dnssec`, net/dns.py):

- the MX records and the host's addresses must be secure (DNSSEC-validated); else DANE does
  not apply to the host and the destination's own level does (RFC 7672 2.2);
- the TLSA records at _PORT._tcp.HOST: secure and usable (DANE-TA(2) or DANE-EE(3), selector
  0 or 1, matching type 0, 1 or 2) -> the host is authenticated by them (level dane);
  secure but none usable -> TLS is required, unauthenticated (level encrypt, RFC 7672 2.2);
  none, or not secure -> no DANE (dane-only: the host is not used); the lookup fails (a
  bogus signature makes a validating resolver answer SERVFAIL) -> the host is not used
  (RFC 7672 2.2.3), for this attempt.

After the handshake (check): DANE-EE(3) matches the server's own certificate or public key,
with no name or expiry check (RFC 7672 3.1.1); DANE-TA(2) matches a certificate the server
sent above its own, which must have signed the chain down to the server's certificate, and
the server's certificate must be current and name the MX host or the next-hop domain
(RFC 7672 3.1.2, 3.2.2). PKIX-TA(0) and PKIX-EE(1) are not used for SMTP (RFC 7672 3.1.3).

An MX host that is a CNAME is looked up at the name its CNAMEs lead to first, then at its own
name (RFC 7672 2.2.2); DANE-TA accepts a certificate naming either, or the next-hop domain.
The certificates the server sent are taken in whatever order they came.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.resolver
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from . import dns as mx
from .tlspolicy import TlsPolicy, matches, named

USAGES = {2: "DANE-TA", 3: "DANE-EE"}  # the usages SMTP uses (RFC 7672 3.1)


@dataclass(frozen=True, slots=True)
class Tlsa:
    usage: int
    selector: int  # 0: the whole certificate, 1: its SubjectPublicKeyInfo
    mtype: int  # 0: the data itself, 1: SHA-256, 2: SHA-512
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage in USAGES and self.selector in (0, 1) and self.mtype in (0, 1, 2)

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    def matches(self, der: bytes) -> bool:
        """Whether the certificate `der` (DER) is the one this record names."""
        try:
            part = der if self.selector == 0 else _spki(der)
        except ValueError:
            return False
        digest = part if self.mtype == 0 else hashlib.sha256(part).digest() if self.mtype == 1 else hashlib.sha512(part).digest()
        return digest == self.data


def _spki(der: bytes) -> bytes:
    public = x509.load_der_x509_certificate(der).public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(slots=True)
class Plan:
    """What DANE says about a destination's hosts, before any connection."""

    policies: dict[str, TlsPolicy] = field(default_factory=dict)  # per host where DANE decides the level
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)  # hosts not to try: (why, RFC 8460 result type)
    records: dict[str, tuple[Tlsa, ...]] = field(default_factory=dict)  # the TLSA records found, per host

    @property
    def applies(self) -> bool:
        """Some host of the destination publishes secure TLSA records: DANE is its policy (RFC 8461 2: over MTA-STS)."""
        return bool(self.records)

    def authenticated(self, host: str) -> bool:
        found = self.policies.get(host)
        return found is not None and found.verified


async def plan(hosts: Sequence[mx.Exchanger], *, port: int, level: str, nexthop: str, resolve: dns.asyncresolver.Resolver) -> Plan:
    """The DANE level of each host (`level` is the destination's: may, dane or dane-only)."""
    made = Plan()
    for host in hosts:
        if not host.secure:
            if level == "dane-only":
                made.refused[host.host] = (f"DANE: the MX or address records of {host.host} are not DNSSEC-validated", "dane-required")
            continue
        try:
            base, answer = await _tlsa(host, port, resolve)
        except LookupError as exc:
            if level == "dane-only":
                made.refused[host.host] = (f"DANE: {host.host} publishes no TLSA records ({exc})", "dane-required")
            continue
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            why = f"DANE: cannot look up the TLSA records of {host.host} (a DNSSEC validation failure or no answer): {exc}"
            made.refused[host.host] = (why, "dnssec-invalid")
            continue
        if not mx.secure(answer.response):
            if level == "dane-only":
                made.refused[host.host] = (f"DANE: the TLSA records of {host.host} are not DNSSEC-validated", "dane-required")
            continue
        records = tuple(Tlsa(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in answer)
        made.records[host.host] = records
        usable = tuple(r for r in records if r.usable)
        if usable:  # the certificate may name the TLSA base (CNAMEs followed), the MX host, or the domain
            names = tuple(dict.fromkeys((base, host.host)))
            made.policies[host.host] = TlsPolicy(level="dane", nexthop=nexthop, tlsa=usable, names_also=names)
        else:  # RFC 7672 2.2: records that cannot be used still say TLS is there
            made.policies[host.host] = TlsPolicy(level="encrypt", nexthop=nexthop, by="DANE: no usable TLSA record")
    return made


async def _tlsa(host: mx.Exchanger, port: int, resolve: dns.asyncresolver.Resolver) -> tuple[str, dns.resolver.Answer]:
    """The TLSA records of `host` and the base name they were found at: the name its CNAMEs
    lead to first, then its own (RFC 7672 2.2.2). LookupError when neither has any."""
    bases = [host.canonical, host.host] if host.canonical else [host.host]
    for base in bases:
        try:
            return base, await resolve.resolve(f"_{port}._tcp.{base}", "TLSA", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
    raise LookupError(", ".join(f"_{port}._tcp.{b}" for b in bases))


def check(chain: Sequence[bytes], records: Sequence[Tlsa], names: tuple[str, ...], *, now: datetime.datetime | None = None) -> str:
    """Why the chain (DER, the server's certificate first, as sent) does not match `records`,
    or "" when one record matches."""
    if not chain:
        return "the server sent no certificate"
    leaf = chain[0]
    if any(r.usage == 3 and r.matches(leaf) for r in records):
        return ""  # DANE-EE: the key is the server's; neither names nor dates count (RFC 7672 3.1.1)
    anchors = [r for r in records if r.usage == 2]
    if not anchors:
        return "its certificate matches no DANE-EE record"
    for index in range(1, len(chain)):
        if any(r.matches(chain[index]) for r in anchors):
            return _below(chain, index, names, now or datetime.datetime.now(datetime.UTC))
    return "no certificate it sent matches a DANE-TA or DANE-EE record"


def _below(chain: Sequence[bytes], anchor: int, names: tuple[str, ...], now: datetime.datetime) -> str:
    """The path from the server's certificate up to the trust anchor at `anchor`, through the
    certificates it sent in whatever order (RFC 8446 4.4.2 lets them come unordered): each
    signed by the next, the server's current and naming one of `names`."""
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as exc:
        return f"a certificate it sent cannot be read: {exc}"
    current, target, used = certs[0], certs[anchor], {0}
    while current is not target:  # bounded: each certificate is used once
        issuers = [k for k, c in enumerate(certs) if k not in used and c.subject == current.issuer and _signed(current, c)]
        if not issuers:
            return f"its chain to the DANE-TA certificate is broken at {current.subject.rfc4514_string()}"
        used.add(issuers[0])
        current = certs[issuers[0]]
    leaf = certs[0]
    if not (leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc):
        return "its certificate is not valid now (DANE-TA)"
    if not matches(named(leaf), names):
        return f"its certificate does not name {' or '.join(names)} (DANE-TA)"
    return ""


def _signed(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def chain_of(tls: object) -> list[bytes]:
    """The certificates a server sent (DER, its own first), from a trio.SSLStream after its
    handshake. The standard library gives the whole chain only from Python 3.13
    (SSLObject.get_unverified_chain); before, the same method of its internal object."""
    ssl_object = getattr(tls, "_ssl_object", None)  # trio.SSLStream's SSLObject
    public = getattr(ssl_object, "get_unverified_chain", None)
    if public is not None:
        return [bytes(c) for c in public()]
    internal = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if internal is not None:
        import _ssl

        return [c.public_bytes(_ssl.ENCODING_DER) for c in internal() or ()]
    own = tls.getpeercert(binary_form=True)  # type: ignore[attr-defined]  # only its own: DANE-EE still works
    return [own] if own else []
