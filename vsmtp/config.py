"""Configuration: embedded defaults, overridden by an optional TOML file.

TOML -> frozen dataclasses. Unknown keys and wrong types are errors that name the key, the
file and the line, so a typo never silently falls back to a default. Relative paths are
relative to the directory vsmtp runs in (the embedded default keeps everything under ./var).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

MiB = 1024 * 1024

# The outbound TLS security levels (what they ask: net/tlspolicy.py), named here because the
# configuration and the rules give them and the queue's routes carry them.
TlsLevel = Literal["none", "may", "encrypt", "verify", "secure", "dane", "dane-only"]
TLS_LEVELS: tuple[TlsLevel, ...] = ("none", "may", "encrypt", "verify", "secure", "dane", "dane-only")
TLS_ALIASES = {"require": "encrypt"}  # the earlier name of encrypt (delivery.tls_policy, relayhost.tls)
DANE_LEVELS = ("dane", "dane-only")  # planned per MX host (net/dane.py) before connecting


def tls_level(text: str) -> TlsLevel:
    """A TLS security level as written (ValueError for one that is not)."""
    found = TLS_ALIASES.get(text, text)
    for level in TLS_LEVELS:
        if level == found:
            return level
    raise ValueError(f"expected one of {', '.join(TLS_LEVELS)}, got {text!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateConfig:
    """A certificate chain and its key (PEM files); `names` select it by SNI."""

    certificate: str
    key: str
    names: tuple[str, ...] = ()  # host names for SNI; the first certificate is the default


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    """One listening role on one or more addresses ("host:port", IPv6 as "[::1]:port").

    Roles: mx (port 25 style: STARTTLS offered), submission (587 style: STARTTLS required
    before MAIL), submissions (465 style: implicit TLS, RFC 8314).
    """

    name: str = "mx"
    role: Literal["mx", "submission", "submissions"] = "mx"
    addresses: tuple[str, ...] = ("127.0.0.1:2525", "[::1]:2525")
    certificates: tuple[CertificateConfig, ...] = ()  # none: a generated self-signed one
    auth: bool = True  # offer AUTH here when [auth] names a password file (always only over TLS)
    require_auth: bool = False  # MAIL only after AUTH (530 5.7.0): a submission port for your own users
    screen: bool = False  # the checks of [screen] (pregreet, DNSBL) before the greeting, as Postfix's postscreen


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    """SMTP AUTH (RFC 4954) for your users: offered only over TLS; an authenticated client may
    relay. Postfix's smtpd_sasl_auth_enable with smtpd_tls_auth_only."""

    passwords: str = ""  # the password file (user:$scrypt$... lines, `vsmtp auth hash`); "" : AUTH not offered
    mechanisms: tuple[Literal["PLAIN", "LOGIN"], ...] = ("PLAIN", "LOGIN")
    max_failures: int = 3  # failed AUTH commands in one session before 421 and close


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    directory: str = "var/tls"  # where a self-signed certificate is generated when none is configured
    handshake_timeout: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpConfig:
    """Reception choices where RFC 5321 leaves one."""

    bare_line_endings: Literal["reject", "normalize"] = "reject"  # RFC 5321 2.3.8


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig:
    """Who may send to domains that are not ours (Postfix's mynetworks)."""

    networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalConfig:
    """Which domains are ours, and who receives mail in them."""

    domains: tuple[str, ...] = ("localhost",)
    users: tuple[str, ...] = ()  # known local users; postmaster always exists
    catch_all: bool = True  # accept any syntactically safe user in a local domain
    # Postfix's recipient_delimiter: with "+", bob+lists@ is bob's mail (the extension "lists"
    # goes to routes, rules and pipe's ${extension}); several characters: any of them.
    recipient_delimiter: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalConfig:
    path: str = "var/journal"
    max_size: int = 0  # bytes; 0 means limited only by the disk
    # MAIL is answered 452 4.3.1 while less than this (plus 1.5 times a declared SIZE) is left
    # for the journal, by max_size or on the disk: Postfix's queue_minfree.
    min_free: int = 16 * MiB
    checkpoint_interval: float = 60.0  # seconds between snapshots of the queue state


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionConfig:
    """How long the journal keeps what is finished (queue/retention.py)."""

    blobs: float = 7 * 86400.0  # seconds after acceptance a finished message's body is kept
    events: float = 30 * 86400.0  # seconds records are kept (then only up to a checkpoint)
    interval: float = 3600.0  # seconds between retention passes


@dataclass(frozen=True, slots=True, kw_only=True)
class PipeConfig:
    """A program mail is piped to (Postfix's pipe(8)): [delivery.pipe.NAME], used by the
    transport "pipe:NAME". Its arguments may hold ${sender}, ${recipient}, ${user},
    ${extension}, ${domain}, ${queue_id}, ${nexthop}; no shell runs it."""

    command: tuple[str, ...]  # the program and its arguments
    user: str = ""  # run as this user (and its group) when vsmtp runs as root; "" : vsmtp's own
    group: str = ""  # ... and this group instead of the user's
    timeout: float = 100.0  # seconds before the program is killed and the delivery deferred
    recipients: int = 1  # recipients per run (more than 1: ${recipient} repeats the argument for each)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    enabled: bool = True
    workers: int = 8
    maildir: str = "var/mail/{user}/Maildir"  # {user}: local part, {domain}: the domain
    mbox: str = "var/mail/{user}.mbox"  # the same placeholders
    # How local mail is delivered: "maildir", "mbox", "lmtp:HOST:PORT" or "lmtp:unix:PATH"
    # (Dovecot), "pipe:NAME" ([delivery.pipe.NAME]), "discard", or "error[:TEXT]" ...
    mailbox: str = "maildir"
    mailboxes: Mapping[str, str] = field(default_factory=dict)  # ... unless named here: "user@domain", "user" or "@domain" -> transport
    pipe: Mapping[str, PipeConfig] = field(default_factory=dict)  # programs mail is piped to
    # Who owns what maildir and mbox write when vsmtp runs as root: "system" (the system user
    # of the mailbox's name, else vsmtp's own user), a user name, or "UID:GID" (virtual
    # mailboxes, as Postfix's virtual_uid_maps); "" : vsmtp's own user always.
    mailbox_owner: str = "system"
    # How a batch of Maildir files reaches the disk before it is journaled as delivered:
    # "file": each file fsynced, renamed into new/, then new/ fsynced (as Postfix's and
    # Dovecot's delivery agents do); "filesystem": the batch's files written, one syncfs(2) of
    # the filesystem they are on, then renamed into new/ and the directory fsynced: two
    # flushes a batch instead of one a file. Linux only (elsewhere "file"); the sync also
    # waits for whatever else is being written to that filesystem: for a mail spool of its own.
    maildir_sync: Literal["file", "filesystem"] = "file"
    lmtp_per_server: int = 10  # LMTP deliveries at once to one server
    remote_workers: int = 50  # remote (SMTP) deliveries at once
    remote_port: int = 25  # the port of other domains' mail hosts (tests use another)
    per_domain: int = 20  # SMTP deliveries at once to one destination domain
    per_host: int = 20  # SMTP deliveries at once to one mail host address, whatever the domain
    connection_idle: float = 2.0  # seconds a connection to a remote host stays open for the next message (0: none)
    # Destination domain -> TLS security level (net/tlspolicy.py): "none", "may" (the default),
    # "encrypt", "verify" or "secure" ("require": encrypt).
    tls_policy: Mapping[str, str] = field(default_factory=dict)
    tls_ca: str = ""  # the CAs trusted at verify and secure (a PEM file); "" : the system's
    mta_sts: bool = True  # honour the MTA-STS policies (RFC 8461) of domains without a tls_policy entry
    mta_sts_port: int = 443  # the port policies are fetched from (tests use another)
    lifetime: float = 5 * 86400.0  # seconds a message may wait in the queue; then it fails (and bounces)
    delay_warning: float = 0.0  # seconds after which the sender is told the message is delayed (once); 0: never
    retry_first: float = 300.0  # seconds before the first retry, doubling after each failure ...
    retry_max: float = 3600.0  # ... up to this (Postfix's minimal_ and maximal_backoff_time)


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayhostConfig:
    """A smarthost: all mail for other domains goes there instead of to their MX hosts."""

    url: str = ""  # "smtp://host:port" (STARTTLS) or "smtps://host:port" (TLS from the start); "" : none
    username: str = ""  # AUTH PLAIN credentials, sent only over TLS
    password: str = ""
    # The TLS security level (net/tlspolicy.py): "verify" checks that the certificate chains to
    # a trusted CA and names the relay host, and credentials are sent only then; "secure",
    # "encrypt" (no check; "require" is its earlier name), "may", "none".
    tls: str = "verify"
    ca: str = ""  # the CAs trusted for it (a PEM file); "" : the system's


@dataclass(frozen=True, slots=True, kw_only=True)
class SpfConfig:
    """SPF (RFC 7208) of the MAIL FROM identity, or of the HELO identity for the null sender.
    Clients in relay.networks and authenticated clients are not checked."""

    mode: Literal["off", "tag", "reject"] = "tag"  # tag: headers only; reject: fail 550 5.7.23, temperror 451 4.7.24
    timeout: float = 20.0  # seconds for the whole check, every lookup included (RFC 7208 4.6.4)


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKeyConfig:
    """One DKIM key: who signs (d=), with which selector (s=), key file and algorithm."""

    domain: str
    selector: str
    key: str  # the private key file (PEM), written by `vsmtp dkim keygen`
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"


# RFC 6376 5.4.1's list; From, Subject and To are also over-signed (a second, empty
# instance is signed, so none can be added without breaking the signature).
DKIM_HEADERS = (
    "from", "reply-to", "subject", "date", "to", "cc", "resent-date", "resent-from", "resent-to", "resent-cc",
    "in-reply-to", "references", "list-id", "list-help", "list-unsubscribe", "list-subscribe", "list-post",
    "list-owner", "list-archive", "message-id", "mime-version", "content-type", "content-transfer-encoding",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class DkimConfig:
    """DKIM (RFC 6376, RFC 8463): every signature verified at the data stage; mail from the
    configured domains signed at the post-queue stage."""

    verify: bool = True
    timeout: float = 10.0  # seconds for the key lookups of one message
    sign: tuple[SigningKeyConfig, ...] = ()  # [[dkim.sign]]; two keys for one domain sign with both
    sign_from: Literal["trusted", "all"] = "trusted"  # trusted: authenticated users and relay.networks only
    headers: tuple[str, ...] = DKIM_HEADERS
    oversign: tuple[str, ...] = ("from", "subject", "to")


@dataclass(frozen=True, slots=True, kw_only=True)
class DmarcConfig:
    """DMARC (RFC 7489): the From domain's policy applied to the SPF and DKIM results."""

    mode: Literal["off", "tag", "enforce"] = "tag"  # enforce: p=reject 550 5.7.1, p=quarantine into `quarantine`
    quarantine: str = "dmarc"
    timeout: float = 10.0  # seconds for the policy lookups of one message
    report_org: str = ""  # org_name of the aggregate reports ("" : the hostname)
    report_from: str = ""  # their From and envelope sender ("" : postmaster@hostname)
    report_limit: int = 10  # reports sent to one address in one `vsmtp dmarc report --send`


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsrptConfig:
    """SMTP TLS reports (RFC 8460) on the mail vsmtp sent (`vsmtp tlsrpt report`)."""

    report_org: str = ""  # organization-name ("" : the hostname)
    report_from: str = ""  # contact-info, and the From and envelope sender of mailed reports ("" : postmaster@hostname)
    report_limit: int = 10  # reports sent to one rua in one `vsmtp tlsrpt report --send`


@dataclass(frozen=True, slots=True, kw_only=True)
class ArcConfig:
    """ARC (RFC 8617): chains verified on inbound mail; mail vsmtp forwards sealed."""

    verify: bool = True
    trusted_sealers: tuple[str, ...] = ()  # sealing domains whose passing chain overrides a DMARC fail
    seal: SigningKeyConfig | None = None  # [arc.seal]: seal forwarded mail with this key; none: no sealing


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsConfig:
    """The resolver every lookup goes through (MX for delivery, SPF, DKIM keys, DMARC policies)."""

    nameservers: tuple[str, ...] = ()  # "host" or "host:port"; none: the system's resolv.conf
    timeout: float = 10.0  # seconds for one lookup, all servers and retries included
    dnssec: bool = False  # the nameservers validate DNSSEC: their AD bit is trusted (DANE needs it); keep them on this host


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    message_size: int = 50 * MiB  # RFC 1870 SIZE, also enforced on the bytes received
    bodies_in_flight: int = 512 * MiB  # message data held in memory at once by one receiving process; past it 452 4.3.1
    memory_per_message: int = 1 * MiB  # octets of a message held in memory as it arrives; the rest spills to a file beside the journal
    line_length: int = 1000  # RFC 5321 4.5.3.1.6, CRLF included; 0 means no limit
    recipients: int = 1000  # per message; RFC 5321 4.5.3.1.8 asks for at least 100
    command_timeout: float = 300.0  # RFC 5321 4.5.3.2.7: a whole command line, 5 minutes from when we wait for it
    data_timeout: float = 180.0  # RFC 5321 4.5.3.2.5: the whole DATA or BDAT transfer, plus what min_data_rate earns
    min_data_rate: int = 500  # octets/s a transfer keeps up to earn more time (Postfix's smtpd_min_data_rate); 0: none
    stress_timeout: float = 10.0  # command_timeout (and data_timeout) while 80% of max_connections are taken
    session_duration: float = 3600.0  # a whole session, however busy
    max_connections: int = 1000  # sessions at once, in all
    max_connections_per_ip: int = 50  # sessions at once from one client address
    soft_errors: int = 10  # errors before each reply is delayed
    hard_errors: int = 20  # errors before 421 and close
    error_delay: float = 1.0  # seconds, times the errors past soft_errors
    junk_commands: int = 100  # NOOP, RSET, VRFY, EXPN, HELP before each further one counts as an error; 0: no limit
    shutdown_grace: float = 30.0  # SIGTERM: seconds for open transactions to finish


@dataclass(frozen=True, slots=True, kw_only=True)
class AnvilConfig:
    """Limits on what one client does across sessions and receiving processes (Postfix's
    anvil). Rates count per `interval`; 0 turns a limit off. Clients in relay.networks are
    never limited here."""

    interval: float = 60.0  # seconds: the unit of every rate (Postfix's anvil_rate_time_unit)
    network_connections: int = 0  # sessions at once from one /24 (IPv4) or /64 (IPv6)
    connection_rate: int = 0  # new connections per interval from one address
    network_connection_rate: int = 0  # ... and from one network
    message_rate: int = 0  # MAIL commands per interval from one address (450 4.7.1 past it)
    recipient_rate: int = 0  # RCPT commands per interval from one address (450 4.7.1 past it)
    auth_failures: int = 10  # failed logins per interval from one address, then it is locked out
    auth_user_failures: int = 10  # failed logins per interval for one user name, then it is locked out
    lockout: float = 900.0  # seconds a lock-out lasts: no login of it succeeds meanwhile, right password or not


@dataclass(frozen=True, slots=True, kw_only=True)
class ScreenConfig:
    """Checks before the greeting, on listeners with `screen = true` (Postfix's postscreen).
    Clients in relay.networks are not screened; a client that passed is not screened again
    for `pass_ttl` seconds (per receiving process)."""

    pregreet: float = 0.0  # seconds to wait after a first 220- line for a client that talks too early (0: no test)
    dnsbl: tuple[str, ...] = ()  # "zone", "zone*weight", "zone=127.0.0.2*weight"; a negative weight allowlists
    threshold: int = 1  # the DNSBL score that refuses the client (554 5.7.1)
    timeout: float = 5.0  # seconds for the DNSBL lookups of one client
    pass_ttl: float = 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class GreylistConfig:
    """Greylisting at RCPT (the triplet: client network, sender, recipient): a first attempt
    is told to try again later (450 4.7.1); one retried after `delay` passes, and a client
    whose mail passed `passes` times is not greylisted again. Clients in relay.networks and
    authenticated clients are never greylisted."""

    enabled: bool = False
    delay: float = 300.0  # seconds before a retry passes
    expiry: float = 35 * 86400.0  # seconds a triplet that was never retried, or a pass, is remembered
    passes: int = 5  # triplets passed from one client before the client itself passes (0: never)
    database: str = "var/greylist.sqlite"


@dataclass(frozen=True, slots=True, kw_only=True)
class OtlpConfig:
    """Where OTLP goes (exporter = "otlp"). Empty values leave the choice to the standard
    OTEL_EXPORTER_OTLP_* environment variables, then to the SDK's defaults."""

    protocol: Literal["", "grpc", "http/protobuf"] = ""  # "": OTEL_EXPORTER_OTLP_PROTOCOL, else grpc
    endpoint: str = ""  # grpc: "http://127.0.0.1:4317"; http/protobuf: "http://127.0.0.1:4318" (/v1/traces ... added)
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. an API key: {"authorization" = "Bearer ..."}
    insecure: bool = False  # gRPC without TLS to an endpoint given without a scheme (http:// is plain, https:// TLS)
    certificate: str = ""  # a CA bundle (PEM) that the collector's certificate is verified against
    timeout: float = 10.0  # seconds an export may take, retries included (in a background thread)


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryConfig:
    """Traces, metrics and logs (vsmtp/telemetry/, docs/telemetry.md)."""

    exporter: Literal["none", "console", "otlp"] = "none"
    otlp: OtlpConfig = OtlpConfig()
    logs: bool = False  # also export log records (OTLP, or the console)
    metric_interval: float = 60.0  # seconds between metric exports
    prometheus: str = ""  # "127.0.0.1:9465": serve /metrics there, the figures of every process together
    log_format: Literal["text", "json"] = "text"  # json: one object per line, with trace_id and span_id
    trace_url: str = ""  # "https://tracing.example/trace/{trace_id}": `vsmtp trace` prints the link
    traceparent: bool = True  # a traceparent header from an authenticated or relay.networks client continues its trace


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    hostname: str = field(default_factory=socket.getfqdn)
    # Receiving processes (workers.py): one per core by default; 0 runs everything in one process.
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    local: LocalConfig = LocalConfig()
    relay: RelayConfig = RelayConfig()
    auth: AuthConfig = AuthConfig()
    tls: TlsConfig = TlsConfig()
    smtp: SmtpConfig = SmtpConfig()
    journal: JournalConfig = JournalConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    retention: RetentionConfig = RetentionConfig()
    dns: DnsConfig = DnsConfig()
    spf: SpfConfig = SpfConfig()
    dkim: DkimConfig = DkimConfig()
    dmarc: DmarcConfig = DmarcConfig()
    tlsrpt: TlsrptConfig = TlsrptConfig()
    arc: ArcConfig = ArcConfig()
    relayhost: RelayhostConfig = RelayhostConfig()
    limits: LimitsConfig = LimitsConfig()
    anvil: AnvilConfig = AnvilConfig()
    screen: ScreenConfig = ScreenConfig()
    greylist: GreylistConfig = GreylistConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    rules: str = ""  # the rules file (Python, docs/rules.md); "" : none
    plugins: tuple[str, ...] = ()  # entry-point names in group "vsmtp", loaded in this order
    plugin: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # [plugin.NAME] sections
    source: str = "<embedded defaults>"


def parse_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:25' -> ('127.0.0.1', 25); '[::1]:25' -> ('::1', 25)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listener address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def load(path: str | Path | None = None) -> Config:
    """The embedded defaults, overridden by the TOML file at `path` if one is given."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not table:
        return Config(source=str(path))
    src = _Source(path, text)
    config: Config = _build(Config, table, (), src)
    if config.relayhost.url and not re.match(r"^smtps?://[^/:]+(:\d+)?/?$|^smtps?://\[[0-9a-fA-F:]+\](:\d+)?/?$", config.relayhost.url):
        raise src.error(("relayhost", "url"), f"expected smtp://host:port or smtps://host:port, got {config.relayhost.url!r}")
    for keys, value in [(("relayhost", "tls"), config.relayhost.tls)] + [
        (("delivery", "tls_policy", name), value) for name, value in config.delivery.tls_policy.items()
    ]:
        try:
            tls_level(value)
        except ValueError as exc:
            raise src.error(keys, str(exc)) from None
    if tls_level(config.relayhost.tls) in DANE_LEVELS:
        raise src.error(("relayhost", "tls"), "DANE is for MX hosts: give the relay host verify or secure (and ca, if its CA is private)")
    for name, value in config.delivery.tls_policy.items():
        if tls_level(value) in DANE_LEVELS and not config.dns.dnssec:
            raise src.error(("delivery", "tls_policy", name), f"{value} needs a validating resolver: set dns.dnssec = true")
    if config.relayhost.username and tls_level(config.relayhost.tls) not in ("verify", "secure"):
        why = "credentials go only to a verified server: set verify or secure (and ca, if its CA is private)"
        raise src.error(("relayhost", "tls"), why)
    from .queue import policy

    for keys, value in [(("delivery", "mailbox"), config.delivery.mailbox)] + [
        (("delivery", "mailboxes", name), value) for name, value in config.delivery.mailboxes.items()
    ]:
        try:
            policy.check_transport(value, config.delivery.pipe)
        except ValueError as exc:
            raise src.error(keys, str(exc)) from None
    for name, pipe in config.delivery.pipe.items():
        if not pipe.command:
            raise src.error(("delivery", "pipe", name, "command"), "expected the program and its arguments")
        try:
            policy.check_command(pipe.command)
        except ValueError as exc:
            raise src.error(("delivery", "pipe", name, "command"), str(exc)) from None
        if pipe.recipients < 1:
            raise src.error(("delivery", "pipe", name, "recipients"), "at least 1")
    owner = config.delivery.mailbox_owner
    if owner not in ("", "system") and not re.fullmatch(r"\d+:\d+|[a-z_][a-z0-9_.-]*\$?", owner):
        raise src.error(("delivery", "mailbox_owner"), f"expected 'system', '', a user name or UID:GID, got {owner!r}")
    for index, listener in enumerate(config.listeners):
        if listener.require_auth and not (config.auth.passwords and listener.auth):
            raise src.error(("listeners", index, "require_auth"), "needs AUTH offered here: auth.passwords set and auth not false")
    if config.auth.passwords and not config.auth.mechanisms:
        raise src.error(("auth", "mechanisms"), "at least one mechanism is needed to offer AUTH")
    if config.telemetry.prometheus:
        try:
            parse_address(config.telemetry.prometheus)
        except ValueError:
            raise src.error(("telemetry", "prometheus"), f"expected host:port, got {config.telemetry.prometheus!r}") from None
    if config.telemetry.trace_url and "{trace_id}" not in config.telemetry.trace_url:
        raise src.error(("telemetry", "trace_url"), "expected a URL with {trace_id} in it")
    return config


def to_table(config: Config) -> dict[str, Any]:
    """The configuration as plain data (JSON- and TOML-shaped), without its source."""
    table = dataclasses.asdict(config)
    del table["source"]
    return table


def from_table(table: Mapping[str, Any], source: str) -> Config:
    """The inverse of to_table, checked like a file (for a process handed its configuration)."""
    config: Config = _build(Config, table, (), _Source(Path(source), ""))
    return dataclasses.replace(config, source=source)


@dataclass(frozen=True, slots=True)
class _Source:
    path: Path
    text: str

    def error(self, keys: tuple[str | int, ...], message: str) -> ConfigError:
        dotted = ".".join(str(k) for k in keys) or "(top level)"
        line = _find_line(self.text, keys)
        where = f"{self.path}, line {line}" if line else str(self.path)
        return ConfigError(f"{where}: {dotted}: {message}")


def _build(cls: type[Any], table: Mapping[str, Any], keys: tuple[str | int, ...], src: _Source) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise src.error((*keys, key), f"unknown key (known: {', '.join(sorted(known))})")
        values[key] = _convert(hints[key], value, (*keys, key), src)
    if cls is Config:
        values["source"] = str(src.path)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and _required(f)]
    if missing:
        raise src.error(keys, f"missing key{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    return cls(**values)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _convert(hint: Any, value: Any, keys: tuple[str | int, ...], src: _Source) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise src.error(keys, "expected a table")
        return _build(hint, value, keys, src)  # type: ignore[arg-type]
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise src.error(keys, "expected a list")
        return tuple(_convert(item, v, (*keys, i), src) for i, v in enumerate(value))
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise src.error(keys, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType) and value is not None:
        tables = [arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg)]
        if tables:  # an optional table: [arc.seal]
            return _convert(tables[0], value, keys, src)
    if origin in (Mapping, dict, typing.Union, types.UnionType) or hint is Any:
        if origin is Mapping and not isinstance(value, dict):
            raise src.error(keys, "expected a table")
        if origin is Mapping and dataclasses.is_dataclass(item := typing.get_args(hint)[1]):  # [delivery.pipe.NAME]
            return {name: _convert(item, table, (*keys, name), src) for name, table in value.items()}
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise src.error(keys, f"expected an integer, got {value!r}")
    if not isinstance(value, hint):
        raise src.error(keys, f"expected {hint.__name__}, got {type(value).__name__} {value!r}")
    if hint is int and value < 0:
        raise src.error(keys, "must not be negative")
    return value


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_.\"-]+)\s*=")
_PART = re.compile(r'\s*(?:"([^"]*)"|([A-Za-z0-9_-]+))\s*(?:\.|$)')


def _dotted(key: str) -> list[str]:
    """A TOML dotted key's parts: `delivery.tls_policy."example.net"` -> delivery, tls_policy, example.net."""
    return [m.group(1) if m.group(1) is not None else m.group(2) for m in _PART.finditer(key.strip())]


def _find_line(text: str, keys: tuple[str | int, ...]) -> int | None:
    """The line that sets `keys` (e.g. ('listeners', 0, 'role')), found by a scan of the text.

    tomllib keeps no positions; this follows [table] and [[array]] headers, which covers how
    configuration files are written. Returns None when the key cannot be placed.
    """
    wanted = [k for k in keys]
    table: list[str | int] = []
    counts: dict[str, int] = {}
    best = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            name = header.group(2).replace('"', "")
            if header.group(1) == "[[":
                counts[name] = counts.get(name, -1) + 1
                table = [*_dotted(header.group(2)), counts[name]]
            else:
                table = list(_dotted(header.group(2)))
            if table == wanted[: len(table)] and best is None and len(table) == len(wanted):
                best = number
            continue
        key = _KEY.match(line)
        if key:
            full = [*table, *_dotted(key.group(1))]
            if full == wanted[: len(full)] and len(full) >= len(wanted) - 1:
                return number
    return best
