"""Every DNS question vsmtp asks, on trio: where mail for a domain goes (its MX hosts and
their addresses, RFC 5321 5.1), and the records sender authentication reads (TXT, A, AAAA,
MX and PTR for SPF, DKIM keys, DMARC policies).

Where mail goes:

- MX records by preference, shuffled among equal preferences;
- no MX record: the domain itself is the host (the implicit MX), if it has an address;
- a null MX ("0 .", RFC 7505): the domain accepts no mail, a permanent failure;
- a domain that does not exist: a permanent failure; a lookup that fails or times out: a
  temporary one (try later);
- every host's IPv6 and IPv4 addresses, IPv6 first.

The resolver's nameservers come from `[dns]` in the configuration (tests point them at a
server on loopback), or from the system's resolv.conf. Answers are cached for their TTL.

With `dns.dnssec`, the nameservers are trusted to validate DNSSEC: every query asks for it
(the DO and AD bits) and an answer counts as secure when the server sets AD in it (RFC 6840
5.7). Exchangers say whether their MX records and addresses were all secure, which DANE
(net/dane.py) requires. Without it, nothing is secure.

The checks of sender authentication ask through an AnswerCache: the same few names for
every message, answered from a dict while their TTL lasts.
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.resolver
import trio

from ..config import DnsConfig, parse_address
from ..telemetry import TracedResolver


class DnsTemporary(Exception):
    """The answer cannot be had now: defer."""


class DnsPermanent(Exception):
    """The answer says mail cannot go there: fail (bounce), with an RFC 3463 status."""

    def __init__(self, text: str, *, status: str = "5.4.4") -> None:  # 5.4.4: unable to route
        super().__init__(text)
        self.status = status


@dataclass(frozen=True, slots=True)
class Exchanger:
    host: str  # without the trailing dot
    preference: int
    addresses: tuple[str, ...]  # IPv6 first, then IPv4
    secure: bool = False  # its MX record (or the implicit MX's denial) and its addresses DNSSEC-validated
    canonical: str = ""  # the name its CNAMEs lead to, when it has any (DANE's TLSA base, RFC 7672 2.2.2)


def resolver(config: DnsConfig) -> dns.asyncresolver.Resolver:
    if not config.nameservers:
        made = TracedResolver()
    else:
        made = TracedResolver(configure=False)
        made.nameservers = []
        for server in config.nameservers:  # "192.0.2.1", "192.0.2.1:5353", "2001:db8::1" or "[2001:db8::1]:5353"
            if server.startswith("[") or server.count(":") == 1:
                host, port = parse_address(server)
                made.port = port
            else:
                host = server
            made.nameservers.append(host)
    made.lifetime = config.timeout
    made.cache = dns.resolver.LRUCache(CACHE_SIZE)
    if config.dnssec:  # ask the (validating) nameservers to say what they validated
        made.use_edns(0, dns.flags.DO, 1232)
        made.flags = dns.flags.RD | dns.flags.AD
    return made


def secure(response: dns.message.Message | None) -> bool:
    """Whether a validating resolver vouched for this answer (or denial): its AD bit. Only
    meaningful with `dns.dnssec`, where the queries ask for DNSSEC."""
    return response is not None and bool(response.flags & dns.flags.AD)


def _denial(exc: dns.resolver.NoAnswer | dns.resolver.NXDOMAIN) -> dns.message.Message | None:
    """The response that said "no such record" (or "no such name"), if dnspython kept it."""
    try:
        if isinstance(exc, dns.resolver.NoAnswer):
            return exc.response()  # type: ignore[no-any-return, no-untyped-call]
        return exc.response(exc.qnames()[0])  # type: ignore[no-any-return, no-untyped-call]
    except (KeyError, IndexError, TypeError):
        return None


CACHE_SIZE = 10_000  # answers kept per process, each for its TTL


async def exchangers(domain: str, resolve: dns.asyncresolver.Resolver) -> list[Exchanger]:
    """The hosts to try for `domain`, in order, with their addresses (hosts without any are left out)."""
    try:
        answer = await resolve.resolve(domain, "MX")
        records = [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer]
        mx_secure = secure(answer.response)
    except dns.resolver.NXDOMAIN as exc:
        raise DnsPermanent(f"domain {domain} does not exist", status="5.1.2") from exc
    except dns.resolver.NoAnswer as exc:
        records = [(0, domain)]  # the implicit MX
        mx_secure = secure(_denial(exc))
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
        raise DnsTemporary(f"cannot look up MX of {domain}: {exc}") from exc
    if any(host in ("", ".") for _, host in records) and len(records) == 1:
        raise DnsPermanent(f"domain {domain} accepts no mail (null MX, RFC 7505)", status="5.1.10")  # RFC 7505 4.2
    records = [(pref, host) for pref, host in records if host not in ("", ".")]
    ordered = sorted(records, key=lambda r: (r[0], random.random()))  # shuffled among equals
    found = []
    failures = 0
    for preference, name in ordered:
        addresses, failed, validated, canonical = await _addresses(name, resolve)
        failures += failed
        if addresses:
            validated = mx_secure and validated
            found.append(Exchanger(host=name, preference=preference, addresses=addresses, secure=validated, canonical=canonical))
    if not found:
        if failures:
            raise DnsTemporary(f"cannot look up the addresses of {domain}'s mail hosts")
        raise DnsPermanent(f"no address for any mail host of {domain}")
    return found


async def host(name: str, resolve: dns.asyncresolver.Resolver) -> list[Exchanger]:
    """A named host (a smarthost: no MX lookup), or an IP address as it is."""
    try:
        ipaddress.ip_address(name)
        return [Exchanger(host=name, preference=0, addresses=(name,))]
    except ValueError:
        pass
    addresses, failed, validated, canonical = await _addresses(name, resolve)
    if failed:
        raise DnsTemporary(f"cannot look up the addresses of {name}")
    if not addresses:
        raise DnsTemporary(f"the relay host {name} has no address")  # a configuration problem: keep the mail
    return [Exchanger(host=name, preference=0, addresses=addresses, secure=validated, canonical=canonical)]


async def _addresses(name: str, resolve: dns.asyncresolver.Resolver) -> tuple[tuple[str, ...], int, bool, str]:
    """`name`'s IPv6 then IPv4 addresses, how many of the two lookups failed (rather than
    said "none"), whether both answers (or denials) were DNSSEC-validated, and the name its
    CNAMEs lead to ("" : none)."""
    addresses: list[str] = []
    failed = 0
    validated = True
    canonical = ""
    for rdtype in ("AAAA", "A"):
        try:
            answer = await resolve.resolve(name, rdtype)
            addresses += [r.to_text() for r in answer]
            validated = validated and secure(answer.response)
            expanded = answer.canonical_name.to_text(omit_final_dot=True)
            if expanded.lower() != name.lower().rstrip("."):
                canonical = expanded
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            validated = validated and secure(_denial(exc))
            continue
        except (dns.resolver.NoNameservers, dns.exception.Timeout):
            failed += 1
            validated = False
    return tuple(addresses), failed, validated, canonical


class AnswerCache:
    """Answers kept for their TTL in front of the resolver, for the checks that ask the same
    few names for every message (a sender's SPF record, its DMARC policy, its DKIM key):
    a dict lookup instead of a trip through dnspython's resolution. Names that do not exist
    (or have no such record) are kept for NEGATIVE_TTL at most."""

    NEGATIVE_TTL = 60.0
    SIZE = 10_000

    def __init__(self, resolve: dns.asyncresolver.Resolver) -> None:
        self.resolve = resolve
        self._kept: dict[tuple[str, str], tuple[float, list[object]]] = {}

    async def records(self, name: str, rdtype: str) -> list[object]:
        """As `records`, from the cache when it holds an answer still fresh."""
        key = (name.lower().rstrip("."), rdtype)
        now = trio.current_time()
        found = self._kept.get(key)
        if found is not None and found[0] > now:
            return found[1]
        try:
            answer = await self.resolve.resolve(name, rdtype, search=False)
            rdatas: list[object] = list(answer)
            expires = now + max(0.0, answer.expiration - time.time())
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            rdatas, expires = [], now + self.NEGATIVE_TTL
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise DnsTemporary(f"cannot look up {rdtype} of {name}: {exc}") from exc
        except dns.exception.DNSException as exc:
            raise DnsPermanent(f"{name}: {exc}") from exc
        if len(self._kept) >= self.SIZE:
            self._kept.clear()  # crude, and rare: the names a server asks about are few
        self._kept[key] = (expires, rdatas)
        return rdatas

    async def txt(self, name: str) -> list[bytes]:
        return [b"".join(r.strings) for r in await self.records(name, "TXT")]  # type: ignore[attr-defined]

    async def exists(self, name: str) -> bool:
        for rdtype in ("A", "AAAA", "MX"):
            if await self.records(name, rdtype):
                return True
        return False


def spf_answer(qtype: str, rdata: object) -> object:
    """An answer in the form pyspf's own dnspython lookup gives."""
    if qtype in ("A", "AAAA"):
        return rdata.address  # type: ignore[attr-defined]
    if qtype == "MX":
        return (rdata.preference, rdata.exchange)  # type: ignore[attr-defined]
    if qtype == "PTR":
        return rdata.target.to_text(True)  # type: ignore[attr-defined]
    return tuple(rdata.strings)  # type: ignore[attr-defined]  # TXT
