"""Pure decisions: whether a recipient is accepted, where it goes, and when a failed attempt
is tried again.

Nothing here reads the clock or touches I/O: time comes in as `now=`, configuration as
arguments, and the answers are values the delivery layer acts on.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ..config import Config

# A local part we are willing to turn into a mailbox directory name: letters and digits (any
# script, for SMTPUTF8 users) and . _ + = -, no leading dot, no '/': nothing a shell or a
# path could misread. Anything else is refused at RCPT time.
_SAFE_USER = re.compile(r"\w[\w.+=-]{0,63}\Z")


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Verdict = Literal["local", "relay", "relay denied", "unknown user"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalRoute:
    """Deliver to a local mailbox: a Maildir or an mbox file."""

    user: str
    domain: str
    format: str = "maildir"


def domain_key(domain: str) -> str:
    """A domain as vsmtp compares it: lower case, without a final dot, internationalized
    labels in their A-label form (RFC 5890), so that bücher.example and
    xn--bcher-kva.example are one domain, as senders write either."""
    lowered = domain.lower().rstrip(".")
    if lowered.isascii():
        return lowered
    try:
        return lowered.encode("idna").decode("ascii")
    except UnicodeError:
        return lowered  # not a name IDNA can encode: compared as it is


def is_local_domain(domain: str, config: Config) -> bool:
    return domain_key(domain) in _domains(config.local.domains)


def local_domains(config: Config) -> frozenset[str]:
    """`local.domains` as compared (domain_key), once per configuration."""
    return _domains(config.local.domains)


@functools.lru_cache(maxsize=16)
def _domains(names: tuple[str, ...]) -> frozenset[str]:
    """A configuration's domains as compared, computed once (configurations are immutable)."""
    return frozenset(domain_key(name) for name in names)


@functools.lru_cache(maxsize=16)
def _lowered(names: tuple[str, ...]) -> frozenset[str]:
    """A configuration's names, lower-cased once (configurations are immutable)."""
    return frozenset(name.lower() for name in names)


def local_user(address: str) -> tuple[str, str]:
    """('bob', 'localhost') for 'Bob@LocalHost'; 'postmaster' alone is ('postmaster', '')."""
    local, at, domain = address.rpartition("@")
    if not at:
        return (address.lower(), "")
    return (local.lower(), domain.lower())


def local_recipient_ok(user: str, config: Config) -> bool:
    """Does this (lower-cased) user exist in our local domains? postmaster always does."""
    if user == "postmaster":
        return True
    if not _SAFE_USER.match(user):
        return False
    return config.local.catch_all or user in _lowered(config.local.users)


def relay_networks(config: Config) -> tuple[IpNetwork, ...]:
    """`relay.networks` parsed once (per configuration, not per RCPT)."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in config.relay.networks)


_RELAY: dict[tuple[object, int], tuple[tuple[IpNetwork, ...], bool]] = {}  # (host, id(networks)) -> (networks, answer)


def may_relay(host: str | ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[IpNetwork, ...]) -> bool:
    """Is a client at `host` allowed to send to domains that are not ours (Postfix's mynetworks)?
    Whether an address is in any of `networks`, an IPv4-mapped IPv6 address as its IPv4 one.
    Remembered per client and list of networks (the same list object: the configuration's),
    for it is asked several times per message (relay, SPF, DMARC, the anvil)."""
    key = (host, id(networks))
    found = _RELAY.get(key)
    if found is not None and found[0] is networks:
        return found[1]
    answer = _may_relay(host, networks)
    if len(_RELAY) >= 4096:
        _RELAY.clear()
    _RELAY[key] = (networks, answer)
    return answer


def _may_relay(host: str | ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[IpNetwork, ...]) -> bool:
    address = ipaddress.ip_address(host) if isinstance(host, str) else host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == network.version and address in network for network in networks)


def room_needed(config: Config, mail_params: Mapping[str, str | None]) -> int:
    """Bytes the journal must have free to take a transaction (Postfix's queue_minfree):
    `journal.min_free`, plus 1.5 times the SIZE the client declared (RFC 1870)."""
    size = mail_params.get("SIZE") or "0"
    declared = int(size) if size.isdigit() else 0
    return config.journal.min_free + declared * 3 // 2


def signing_due(config: Config, *, trusted: bool, recipients: Sequence[str]) -> bool:
    """Whether a message will be DKIM-signed or ARC-sealed at the post-queue stage
    (delivery/signing.py), so that it must take that stage: signed when it comes from a
    trusted client (or `dkim.sign_from = "all"`) and keys are configured; sealed when it
    comes from another client and goes on to another domain. The From domain is looked at
    when signing."""
    if config.dkim.sign and (trusted or config.dkim.sign_from == "all"):
        return True
    return config.arc.seal is not None and not trusted and any(remote_domain(r, config) is not None for r in recipients)


def recipient_verdict(address: str, config: Config, *, relay_allowed: bool) -> Verdict:
    """What to do with RCPT TO:<address>: a local mailbox, a relay, or a refusal and why."""
    user, domain = local_user(address)
    if domain and not is_local_domain(domain, config):
        return "relay" if relay_allowed else "relay denied"
    return "local" if local_recipient_ok(user, config) else "unknown user"


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteRoute:
    """Deliver over SMTP to the domain's mail hosts (its MX, or the domain itself)."""

    domain: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Smarthost:
    host: str
    port: int
    implicit_tls: bool  # smtps://


Route = LocalRoute | RemoteRoute | Smarthost  # how one recipient is delivered


def smarthost(config: Config) -> Smarthost | None:
    """relayhost.url parsed: smtp://host[:25] or smtps://host[:465]; None when not set."""
    return relay_url(config.relayhost.url) if config.relayhost.url else None


def relay_url(url: str) -> Smarthost:
    """smtp://host[:25], smtp://[host]:port or smtps://host[:465]."""
    scheme, _, rest = url.partition("://")
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = rest.partition(":")
    implicit = scheme == "smtps"
    return Smarthost(host=host, port=int(port) if port else (465 if implicit else 25), implicit_tls=implicit)


def remote_domain(address: str, config: Config) -> str | None:
    """The recipient's domain if it is not ours (mail for it goes out over SMTP), else None."""
    _, domain = local_user(address)
    return domain if domain and not is_local_domain(domain, config) else None


def route(address: str, config: Config) -> LocalRoute | RemoteRoute:
    """The route of an accepted recipient: a local mailbox, or the domain's mail hosts."""
    remote = remote_domain(address, config)
    if remote is not None:
        return RemoteRoute(domain=remote)
    return _mailbox(address, config)


def _mailbox(address: str, config: Config) -> LocalRoute:
    """The local mailbox of the address's user (in its domain, or the first local one)."""
    user, domain = local_user(address)
    domain = domain or config.local.domains[0].lower()
    mailboxes = config.delivery.mailboxes
    chosen = mailboxes.get(f"{user}@{domain}") or mailboxes.get(user) or mailboxes.get(f"@{domain}") or config.delivery.mailbox
    return LocalRoute(user=user, domain=domain, format=chosen)


def check_route(text: str) -> None:
    """ValueError unless `text` is a route a rule may choose (ctx.set_route): "local" (the
    mailbox of the address's user, whatever its domain), "smtp" (the domain's mail hosts),
    or "smtp:HOST[:PORT]" / "smtp:[HOST]:PORT" (that host, as Postfix's "smtp:[host]:port")."""
    if text in ("local", "smtp"):
        return
    scheme, colon, rest = text.partition(":")
    if scheme in ("smtp", "smtps") and colon and rest and not rest.startswith("//"):
        try:
            relay_url(f"{scheme}://{rest}")
            return
        except ValueError:
            pass
    raise ValueError(f"route {text!r}: expected local, smtp, or smtp:HOST[:PORT]")


def chosen_route(text: str, address: str, config: Config) -> Route:
    """The route a rule chose for `address` (check_route says which texts are routes)."""
    check_route(text)
    if text == "local":
        return _mailbox(address, config)
    _, domain = local_user(address)
    if text == "smtp":
        if not domain:
            raise ValueError(f"route smtp for {address!r}: the address has no domain")
        return RemoteRoute(domain=domain)
    scheme, _, rest = text.partition(":")
    return relay_url(f"{scheme}://{rest}")


def retry_at(attempts: int, *, now: float, config: Config) -> float:
    """When to try again after `attempts` failed attempts: `delivery.retry_first` (5 min)
    doubling after each failure, capped at `delivery.retry_max` (1 h), as Postfix's backoff."""
    delivery = config.delivery
    delay = min(delivery.retry_first * float(2 ** max(attempts - 1, 0)), delivery.retry_max)
    return now + delay
