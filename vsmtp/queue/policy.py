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
from dataclasses import dataclass, replace
from typing import Literal

from ..config import DANE_LEVELS, Config, tls_level

# A local part we are willing to turn into a mailbox directory name: letters and digits (any
# script, for SMTPUTF8 users) and . _ + = -, no leading dot, no '/': nothing a shell or a
# path could misread. Anything else is refused at RCPT time.
_SAFE_USER = re.compile(r"\w[\w.+=-]{0,63}\Z")


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Verdict = Literal["local", "relay", "relay denied", "unknown user"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalRoute:
    """Deliver to a local mailbox: a Maildir or an mbox file."""

    user: str  # the mailbox's user: the local part without its extension (recipient_delimiter)
    domain: str
    format: str = "maildir"
    extension: str = ""  # "lists" for bob+lists@ when local.recipient_delimiter is "+"

    @property
    def kind(self) -> str:
        return self.format

    @property
    def text(self) -> str:
        return self.format


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
    return "local" if local_recipient_ok(split_extension(user, config.local.recipient_delimiter)[0], config) else "unknown user"


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteRoute:
    """Deliver over SMTP to the domain's mail hosts (its MX, or the domain itself)."""

    domain: str
    tls: str = ""  # a delivery rule's TLS security level for it (set_route's tls=); "" : the configuration's
    kind = "smtp"

    @property
    def text(self) -> str:
        return f"smtp:{self.domain}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Smarthost:
    host: str
    port: int
    implicit_tls: bool  # smtps://
    tls: str = ""  # a delivery rule's TLS security level for it (set_route's tls=); "" : the configuration's
    kind = "smtp"

    @property
    def text(self) -> str:
        return f"{'smtps' if self.implicit_tls else 'smtp'}:[{self.host}]:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LmtpRoute:
    """Hand the message to an LMTP server (RFC 2033): Dovecot's, Cyrus's. A TCP host and port,
    or a unix socket (path)."""

    host: str = ""
    port: int = 24
    path: str = ""  # a unix socket, instead of host and port
    kind = "lmtp"

    @property
    def name(self) -> str:
        return f"unix:{self.path}" if self.path else f"[{self.host}]:{self.port}"

    @property
    def text(self) -> str:
        return f"lmtp:{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PipeRoute:
    """Run the program [delivery.pipe.NAME] with the message on its standard input."""

    name: str
    kind = "pipe"

    @property
    def text(self) -> str:
        return f"pipe:{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscardRoute:
    """Accept and throw away (tests, routing rules); journaled as delivered."""

    kind = "discard"
    text = "discard"


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRoute:
    """Fail the recipient with this text (Postfix's error(8)): a bounce."""

    reason: str = "mail for this recipient is not accepted"
    temporary: bool = False  # deferred instead (a route that names what is not configured)
    kind = "error"
    text = "error"


Route = LocalRoute | RemoteRoute | Smarthost | LmtpRoute | PipeRoute | DiscardRoute | ErrorRoute  # how one recipient is delivered


def smarthost(config: Config) -> Smarthost | None:
    """relayhost.url parsed: smtp://host[:25] or smtps://host[:465]; None when not set."""
    return relay_url(config.relayhost.url) if config.relayhost.url else None


def relay_url(url: str) -> Smarthost:
    """smtp://host[:25], smtp://[host]:port or smtps://host[:465]."""
    scheme, _, rest = url.partition("://")
    implicit = scheme == "smtps"
    host, port = _host_port(rest.rstrip("/"), 465 if implicit else 25)
    return Smarthost(host=host, port=port, implicit_tls=implicit)


def remote_domain(address: str, config: Config) -> str | None:
    """The recipient's domain if it is not ours (mail for it goes out over SMTP), else None."""
    _, domain = local_user(address)
    return domain if domain and not is_local_domain(domain, config) else None


def route(address: str, config: Config) -> Route:
    """The route of an accepted recipient: its local mailbox's transport, or the domain's
    mail hosts."""
    return routed(address, config)[0]


def routed(address: str, config: Config) -> tuple[Route, str]:
    """The route of `address` and why, as the journal says it: relayhost, mx, mailboxes (an
    entry names its transport) or mailbox (the default)."""
    remote = remote_domain(address, config)
    if remote is not None:
        return RemoteRoute(domain=remote), "relayhost" if config.relayhost.url else "mx"
    return _mailbox(address, config)


def split_extension(user: str, delimiter: str) -> tuple[str, str]:
    """('bob', 'lists') for 'bob+lists' with delimiter '+' (Postfix's recipient_delimiter:
    any of its characters separates); (user, '') without one. postmaster+x stays whole."""
    if not delimiter:
        return user, ""
    for index, char in enumerate(user):
        if char in delimiter and index > 0:
            return user[:index], user[index + 1 :]
    return user, ""


def _mailbox(address: str, config: Config) -> tuple[Route, str]:
    """The mailbox of the address's user (in its domain, or the first local one): the transport
    `delivery.mailboxes` names for user@domain, user or @domain, else `delivery.mailbox`; and
    which of the two chose it."""
    user, domain = local_user(address)
    user, extension = split_extension(user, config.local.recipient_delimiter)
    domain = domain or config.local.domains[0].lower()
    mailboxes = config.delivery.mailboxes
    entry = mailboxes.get(f"{user}@{domain}") or mailboxes.get(user) or mailboxes.get(f"@{domain}")
    chosen = transport_route(entry or config.delivery.mailbox, user=user, domain=domain, extension=extension)
    return chosen, "mailboxes" if entry else "mailbox"


def transport_route(text: str, *, user: str, domain: str, extension: str = "") -> Route:
    """A local recipient's route from its transport text (check_transport says which)."""
    if text in ("maildir", "mbox"):
        return LocalRoute(user=user, domain=domain, format=text, extension=extension)
    kind, _, rest = text.partition(":")
    if kind == "lmtp":
        if rest.startswith("unix:"):
            return LmtpRoute(path=rest.removeprefix("unix:"))
        host, port = _host_port(rest.removeprefix("inet:"), 24)
        return LmtpRoute(host=host, port=port)
    if kind == "pipe":
        return PipeRoute(name=rest)
    if kind == "discard":
        return DiscardRoute()
    if kind == "error":
        return ErrorRoute(reason=rest) if rest else ErrorRoute()
    raise ValueError(f"transport {text!r}: expected maildir, mbox, lmtp:HOST:PORT, lmtp:unix:PATH, pipe:NAME, discard or error[:TEXT]")


def _host_port(text: str, default: int) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host or (port and not port.isdigit()):
        raise ValueError(f"expected HOST:PORT or [HOST]:PORT, got {text!r}")
    return host, int(port) if port else default


def check_transport(text: str, pipes: Mapping[str, object]) -> None:
    """ValueError unless `text` is a local transport (delivery.mailbox, delivery.mailboxes, a
    rule's set_route) whose pipe, if any, is configured."""
    chosen = transport_route(text, user="x", domain="x")
    if isinstance(chosen, PipeRoute) and chosen.name not in pipes:
        raise ValueError(f"transport {text!r}: no [delivery.pipe.{chosen.name}] is configured")


PIPE_PLACEHOLDERS = ("sender", "recipient", "user", "extension", "domain", "mailbox", "queue_id", "nexthop")
PIPE_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def check_command(command: Sequence[str]) -> None:
    """ValueError for a placeholder the pipe transport does not know ([delivery.pipe.NAME]
    command, checked at load)."""
    for argument in command:
        for name in PIPE_PLACEHOLDER.findall(argument):
            if name not in PIPE_PLACEHOLDERS:
                raise ValueError(f"unknown placeholder ${{{name}}} (known: {', '.join(PIPE_PLACEHOLDERS)})")


def check_route(text: str) -> None:
    """ValueError unless `text` is a route a rule may choose (ctx.set_route): "local" (the
    mailbox of the address's user, whatever its domain), "smtp" (the domain's mail hosts),
    "smtp:HOST[:PORT]" / "smtp:[HOST]:PORT" (that host, as Postfix's "smtp:[host]:port"), or
    a local transport (maildir, mbox, lmtp:..., pipe:NAME, discard, error[:TEXT])."""
    if text in ("local", "smtp"):
        return
    scheme, colon, rest = text.partition(":")
    if scheme in ("smtp", "smtps") and colon and rest and not rest.startswith("//"):
        try:
            relay_url(f"{scheme}://{rest}")
            return
        except ValueError:
            pass
    try:
        transport_route(text, user="x", domain="x")
        return
    except ValueError:
        pass
    raise ValueError(
        f"route {text!r}: expected local, smtp, smtp:HOST[:PORT], or a transport (maildir, mbox, lmtp:..., pipe:NAME, discard, error)"
    )


def check_route_level(route: str, tls: str) -> None:
    """ValueError unless `tls` is a level a delivery rule may give the route `route`
    (ctx.set_route's tls=): any level for the SMTP routes, DANE's for a domain's MX hosts only."""
    if not tls:
        return
    level = tls_level(tls)
    if not (route == "smtp" or route.startswith(("smtp:", "smtps:"))):
        raise ValueError(f"tls={tls!r} for route {route!r}: a TLS level is for the smtp routes")
    if level in DANE_LEVELS and route != "smtp":
        raise ValueError(f"tls={tls!r} for route {route!r}: DANE is for a domain's MX hosts (route smtp)")


def chosen_route(text: str, address: str, config: Config, *, tls: str = "") -> Route:
    """The route a rule chose for `address` (check_route says which texts are routes), at the
    TLS level it gave, if any (checked when it was given: net/tlspolicy.check_route_level)."""
    check_route(text)
    if text == "local":
        return _mailbox(address, config)[0]
    user, domain = local_user(address)
    if text == "smtp":
        if not domain:
            raise ValueError(f"route smtp for {address!r}: the address has no domain")
        return RemoteRoute(domain=domain, tls=tls)
    scheme, _, rest = text.partition(":")
    if scheme in ("smtp", "smtps"):
        return replace(relay_url(f"{scheme}://{rest}"), tls=tls)
    user, extension = split_extension(user, config.local.recipient_delimiter)
    chosen = transport_route(text, user=user, domain=domain or config.local.domains[0].lower(), extension=extension)
    if isinstance(chosen, PipeRoute) and chosen.name not in config.delivery.pipe:
        raise ValueError(f"route {text!r}: no [delivery.pipe.{chosen.name}] is configured")
    return chosen


def retry_at(attempts: int, *, now: float, config: Config) -> float:
    """When to try again after `attempts` failed attempts: `delivery.retry_first` (5 min)
    doubling after each failure, capped at `delivery.retry_max` (1 h), as Postfix's backoff."""
    delivery = config.delivery
    delay = min(delivery.retry_first * float(2 ** max(attempts - 1, 0)), delivery.retry_max)
    return now + delay
