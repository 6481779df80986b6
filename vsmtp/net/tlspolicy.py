"""Outbound TLS security levels, as Postfix's smtp_tls_security_level:

- none: never STARTTLS;
- may: STARTTLS when the server offers it, the certificate not checked (opportunistic; the
  default for a domain's MX hosts);
- encrypt: TLS required, the certificate not checked;
- verify: TLS required, the certificate chains to a trusted CA (the system's, or `ca_file`)
  and names the host connected to (the MX host name, or the relay host's): the default for
  a smarthost, and what sending credentials requires;
- secure: as verify, but the certificate must name the next-hop domain or a host under it
  (the MX name comes from DNS, which an attacker may forge; the domain does not);
- dane: DANE (RFC 7672, net/dane.py) where the destination's DNSSEC-signed TLSA records
  say so, else may; dane-only: DANE or nothing (the host is not used). Both need a
  validating resolver (`dns.dnssec`). A host DANE authenticates gets the level "dane" with
  its TLSA records: the certificate is matched against them, not against a CA.

What is checked here, after the handshake, is the name (RFC 6125: subjectAltName DNS and IP
entries, a wildcard only as the whole leftmost label; the subject's CN only when there is no
DNS name); the chain is checked by OpenSSL during it. Contexts are made once per CA file.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from ..config import DANE_LEVELS, TLS_LEVELS, TlsLevel, tls_level

__all__ = ["DANE_LEVELS", "LEVELS", "Level", "TlsPolicy", "context", "ip_of", "level_of", "matches", "named"]

Level = TlsLevel
LEVELS = TLS_LEVELS
level_of = tls_level  # a configured level (ValueError for one that is not)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsPolicy:
    level: Level = "may"
    nexthop: str = ""  # secure: the domain (or relay host) the certificate must name
    ca_file: str = ""  # verify, secure: the CAs trusted ("" : the system's)
    by: str = ""  # what set the level, when not the configuration ("MTA-STS"): said in failures
    audit: bool = False  # MTA-STS testing: the certificate checked as at verify, what fails reported, the mail delivered anyway
    tlsa: tuple[Any, ...] = ()  # dane: the usable TLSA records (net/dane.Tlsa) the certificate must match
    names_also: tuple[str, ...] = ()  # dane: names a certificate may carry besides the host's (the TLSA base, RFC 7672 3.2.2)

    @property
    def said(self) -> str:
        """The level as a failure names it: "level verify", "level verify, MTA-STS"."""
        return f"level {self.level}" + (f", {self.by}" if self.by else "")

    @property
    def required(self) -> bool:
        return self.level in ("encrypt", "verify", "secure", "dane", "dane-only")

    @property
    def pkix(self) -> bool:
        """The chain checked against the trusted CAs (by OpenSSL, in the handshake)."""
        return self.level in ("verify", "secure")

    @property
    def verified(self) -> bool:
        """The server is authenticated: by a CA (verify, secure) or by its TLSA records (dane)."""
        return self.pkix or (self.level == "dane" and bool(self.tlsa))

    def names(self, host: str) -> tuple[str, ...]:
        """The names a certificate may carry to be accepted for `host`."""
        if self.level == "secure":
            return (self.nexthop, "." + self.nexthop)  # the domain, or any host under it
        if self.level == "dane":  # RFC 7672 3.2.2: the TLSA base domain, the MX host, or the next-hop domain
            return tuple(dict.fromkeys((host, *self.names_also, *((self.nexthop,) if self.nexthop else ()))))
        return (host,)


@functools.lru_cache(maxsize=16)
def context(ca_file: str, verified: bool) -> ssl.SSLContext:
    """The client context of a level: one per CA file (loading a bundle costs milliseconds)."""
    made = ssl.create_default_context(cafile=ca_file or None)
    made.check_hostname = False  # names are matched by `matches`, as the level asks
    made.verify_mode = ssl.CERT_REQUIRED if verified else ssl.CERT_NONE
    # No session ticket extension: vsmtp never resumes a session, and some servers (Exchange
    # among them) fail handshakes that offer tickets, as other MTAs have found.
    made.options |= ssl.OP_NO_TICKET
    return made


def matches(certificate: dict[str, Any], names: tuple[str, ...]) -> bool:
    """Whether the (verified) certificate names one of `names`: a host name, an IP address,
    or ".domain" for any host under the domain."""
    dns = [value.lower() for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"]
    ips = [value for kind, value in certificate.get("subjectAltName", ()) if kind == "IP Address"]
    if not dns and not ips:  # RFC 6125 6.4.4: the CN only without a DNS name
        dns = [value.lower() for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"]
    for name in names:
        wanted = name.lower().rstrip(".")
        address = ip_of(wanted)
        if address is not None:
            if any(ip_of(ip) == address for ip in ips):
                return True
            continue
        for presented in dns:
            if _dns_match(presented.rstrip("."), wanted):
                return True
    return False


def _dns_match(presented: str, wanted: str) -> bool:
    if wanted.startswith("."):  # any host under the domain (secure's dot-nexthop)
        return presented.endswith(wanted) or (presented.startswith("*.") and presented[1:].endswith(wanted))
    if presented.startswith("*."):
        head, _, rest = wanted.partition(".")
        return bool(head) and rest == presented[2:]
    return presented == wanted


def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address `text` writes (brackets allowed), or None for a host name."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def named(cert: x509.Certificate) -> dict[str, object]:
    """The names of `cert` in the form ssl's getpeercert() gives (what tlspolicy.matches reads)."""
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [("DNS", n) for n in alt.get_values_for_type(x509.DNSName)]
        ips = [("IP Address", str(a)) for a in alt.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns_names, ips = [], []
    common = [(("commonName", str(a.value)),) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return {"subjectAltName": tuple(dns_names + ips), "subject": tuple(common)}
