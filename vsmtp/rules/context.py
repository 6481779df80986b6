"""What a rule sees (Context) and what it may change (actions).

A Context lives as long as the SMTP session; each stage fills in more: the connection facts
at connect, the HELO name at helo, the envelope at mail and rcpt, the message at data.
Actions are recorded as they are asked for and applied by vsmtp at the end of the stage
that can apply them (header edits to the message at data, envelope edits before the
message is queued); each is journaled with the name of who asked.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from ..auth.results import ArcResult, DkimResult, DmarcResult, SpfResult
from ..mail import export
from ..mail.message import Message
from ..mail.spill import Spill, joined
from ..queue import events as qe
from ..queue import policy
from .objects import IpAddress

_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 2.2: printable, no colon


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: IpAddress
    port: int


@dataclass(frozen=True, slots=True)
class Action:
    stage: str  # where it was asked for
    by: str  # "rules:FUNCTION" or a plugin's name
    name: str  # add_header, set_header, remove_header, rewrite_sender, add_recipient, ...
    args: tuple[str, ...]

    def event(self, *, at: float, session_id: str, queue_id: str) -> qe.RuleAction:
        """The rule.action that records it, applied to the message `queue_id`."""
        return qe.RuleAction(
            at=at, session_id=session_id, queue_id=queue_id, stage=self.stage, by=self.by, action=self.name, args=self.args
        )


@dataclass(slots=True)
class Context:
    """The session as rules see it. Attributes are read-only for rules; changes go through
    the action methods."""

    session_id: str
    client: Endpoint
    server: Endpoint
    listener: str
    role: str  # smtp, submission, submissions
    local_domains: frozenset[str]
    stage: str = "connect"
    tls: bool = False
    tls_version: str = ""
    helo: str = ""
    auth: str = ""  # the authenticated identity, "" when none
    sender: str | None = None  # MAIL FROM's reverse-path ("" for the null sender), None before MAIL
    recipients: list[str] = field(default_factory=list)  # accepted so far
    mail_params: dict[str, str | None] = field(default_factory=dict)
    recipient: str = ""  # at rcpt and delivery: the one being decided
    route: str = ""  # at delivery: the route vsmtp chose for it (local, smtp, smtp:[HOST]:PORT)
    message: Message | None = None  # at data and after
    queue_id: str = ""  # once queued (postq, delivery)
    spf: SpfResult | None = None  # from mail on: SPF of this transaction (None: not checked, e.g. a trusted client)
    dkim: DkimResult | None = None  # from data on: every DKIM signature's result
    arc: ArcResult | None = None  # from data on: the ARC chain's result
    dmarc: DmarcResult | None = None  # from data on: the DMARC result and disposition
    results: dict[str, Any] = field(default_factory=dict)  # what plugins left for others, by plugin name
    actions: list[Action] = field(default_factory=list)
    by: str = ""  # who runs now (set by the engine, for the actions' record)

    # -- facts ---------------------------------------------------------------------------

    @property
    def direction(self) -> str:
        """incoming (from elsewhere), outgoing (from a local domain to elsewhere) or internal
        (between local domains), for the current recipient (at rcpt) or all of them."""
        sender_local = self._is_local(self.sender or "")
        targets = [self.recipient] if self.recipient else self.recipients
        if not sender_local:
            return "incoming"
        return "internal" if targets and all(self._is_local(t) for t in targets) else "outgoing"

    def _is_local(self, address: str) -> bool:
        _, domain = policy.local_user(address)
        return bool(address) and (not domain or policy.domain_key(domain) in self.local_domains)

    def new_transaction(self) -> None:
        self.sender, self.recipients, self.mail_params, self.recipient, self.message = None, [], {}, "", None
        self.spf = self.dkim = self.arc = self.dmarc = None
        self.actions = []

    # -- actions ---------------------------------------------------------------------------

    def add_header(self, name: str, value: str) -> None:
        """Add a header at the top of the message (at data or postq)."""
        self._record("add_header", _header_name(name), _header_value(value))

    def set_header(self, name: str, value: str) -> None:
        """Replace every header `name` by one with this value (added if there was none)."""
        self._record("set_header", _header_name(name), _header_value(value))

    def remove_header(self, name: str) -> None:
        self._record("remove_header", _header_name(name))

    def rewrite_sender(self, address: str) -> None:
        self._record("rewrite_sender", address)

    def rewrite_recipient(self, old: str, new: str) -> None:
        self._record("rewrite_recipient", old, new)

    def add_recipient(self, address: str) -> None:
        """Another recipient for this message (a BCC), not checked by the rcpt stage."""
        self._record("add_recipient", address)

    def remove_recipient(self, address: str) -> None:
        self._record("remove_recipient", address)

    def export(self, directory: str, form: str = "eml") -> None:
        """At data or postq: once the message is queued (data) or its post-queue changes are
        journaled (postq), write it into `directory` as QUEUEID.STAGE.eml (the raw message)
        or .json (envelope, headers, bodies, attachments: as `vsmtp journal export`)."""
        if form not in ("eml", "json"):
            raise ValueError(f"export form {form!r}: eml or json")
        if self.stage not in ("data", "postq"):
            raise ValueError(f"export at the {self.stage} stage: the message is there at data and postq")
        self._record("export", str(directory), form)

    def set_route(self, recipient: str, route: str, *, tls: str = "") -> None:
        """At delivery: deliver `recipient` by `route` ("local", "smtp", "smtp:[HOST]:PORT", or a
        transport: "maildir", "mbox", "lmtp:HOST:PORT", "pipe:NAME", "discard", "error:TEXT")
        instead of the route vsmtp chose (Postfix's transport maps); for an smtp route, `tls`
        is its TLS security level ("verify", "dane-only" ...) over the configuration's
        (Postfix's smtp_tls_policy_maps)."""
        if self.stage != "delivery":
            raise ValueError(f"set_route at the {self.stage} stage: routes are chosen at the delivery stage")
        policy.check_route(route)  # checked now: ValueError names it
        policy.check_route_level(route, tls)
        self.actions.append(Action(self.stage, self.by, "set_route", (recipient, route, tls) if tls else (recipient, route)))

    def take_changes(self) -> None:
        """The message's part edits become actions of whoever ran (journaled as rule.action;
        applied already)."""
        if self.message is not None and self.message.changes:
            changes, self.message.changes = self.message.changes, []
            self.actions += [Action(self.stage, self.by, name, args) for name, args in changes]

    def _record(self, name: str, *args: str) -> None:
        if self.stage in ("connect", "helo", "auth"):
            raise ValueError(f"{name} at the {self.stage} stage: there is no transaction yet")
        if self.stage == "delivery":
            raise ValueError(f"{name} at the delivery stage: the message is changed at data or postq; delivery chooses routes")
        self.take_changes()  # part edits made before this action come first in the record
        self.actions.append(Action(self.stage, self.by, name, args))


def _header_name(name: str) -> str:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"not a header name: {name!r}")
    return name


_FOLD = re.compile(r"\r\n[ \t]")


def _header_value(value: str) -> str:
    """A header value, folded (CRLF then a space or tab, RFC 5322 2.2.3) or not; any other
    line break is refused: it would smuggle a header of its own."""
    if "\r" in _FOLD.sub("", value) or "\n" in _FOLD.sub("", value) or value.endswith("\r\n"):
        raise ValueError("a header value may hold a line break only to fold it (CRLF, then a space or a tab)")
    return value


def apply_actions(ctx: Context, actions: list[Action]) -> None:
    """Apply header actions to ctx.message and envelope actions to ctx's envelope."""
    message = ctx.message
    for action in actions:
        args = action.args
        if action.name in ("add_header", "set_header", "remove_header"):
            if message is not None:
                message.edit_header(action.name, *args)
        elif action.name == "rewrite_sender":
            ctx.sender = args[0]
        elif action.name == "rewrite_recipient":
            ctx.recipients = [args[1] if r.lower() == args[0].lower() else r for r in ctx.recipients]
        elif action.name == "add_recipient":
            if args[0].lower() not in (r.lower() for r in ctx.recipients):
                ctx.recipients.append(args[0])
        elif action.name == "remove_recipient":
            ctx.recipients = [r for r in ctx.recipients if r.lower() != args[0].lower()]


def exports(
    actions: list[Action], envelope: export.Envelope | qe.MessageAccepted, raw: bytes | Sequence[bytes | Spill], *, stage: str
) -> list[Callable[[], object]]:
    """The writes the export actions asked for (ctx.export), to run once the message they
    write is safe in the journal (after the data stage's commit, or the postq stage's).
    `raw` may come in parts: joined only when something is exported."""
    wanted = [a for a in actions if a.name == "export"]
    if not wanted:
        return []
    if isinstance(envelope, qe.MessageAccepted):
        envelope = export.Envelope.of(envelope)
    message = raw if isinstance(raw, bytes) else joined(raw)
    return [partial(export.save, a.args[0], a.args[1], envelope, message, stage=stage, by=a.by) for a in wanted]


def endpoint(host: str, port: int) -> Endpoint:
    return Endpoint(_address(host), port)


# Parsed once per address, not per session: a client that reconnects for each message (and our
# own address) would otherwise be parsed twice a connection. The objects are immutable.
_address = lru_cache(maxsize=4096)(ipaddress.ip_address)
