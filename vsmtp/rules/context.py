"""What a rule sees (Context) and what it may change (actions).

A Context lives as long as the SMTP session; each stage fills in more: the connection facts
at connect, the HELO name at helo, the envelope at mail and rcpt, the message at data.
Actions are recorded as they are asked for and applied by vsmtp at the end of the stage
that can apply them (header edits to the message at data, envelope edits before the
message is queued); each is journaled with the name of who asked.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..queue import events as ev
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

    def event(self, *, at: float, session_id: str, queue_id: str) -> ev.RuleAction:
        """The rule.action that records it, applied to the message `queue_id`."""
        return ev.RuleAction(
            at=at, session_id=session_id, queue_id=queue_id, stage=self.stage, by=self.by, action=self.name, args=self.args
        )


class Message:
    """The message at data (and after): the raw bytes, with a MIME view parsed only when a
    rule asks for it. Edits (headers, parts) make a new message; `raw` is always current."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._parsed: email.message.EmailMessage | None = None
        self._head: email.message.Message | None = None
        self.edited = False
        self.changes: list[tuple[str, tuple[str, ...]]] = []  # part edits not yet journaled (the engine takes them)

    @property
    def raw(self) -> bytes:
        if self._parsed is not None and self.edited:
            self._raw = self._parsed.as_bytes(policy=email.policy.SMTP)  # only after a part edit
            self._parsed, self._head, self.edited = None, None, False
        return self._raw

    @property
    def mime(self) -> email.message.EmailMessage:
        """The message parsed by the standard library (email.policy.default), on first use."""
        if self._parsed is None:
            parsed = email.message_from_bytes(self._raw, policy=email.policy.default)
            assert isinstance(parsed, email.message.EmailMessage)
            self._parsed = parsed
        return self._parsed

    def header(self, name: str) -> str | None:
        """The first header `name` (decoded), or None; reads only the header section."""
        values = self.headers(name)
        return values[0] if values else None

    def headers(self, name: str) -> list[str]:
        if self._parsed is not None:
            return [str(v) for v in self._parsed.get_all(name, [])]
        if self._head is None:  # the header section alone, parsed once until the next edit
            head = self._raw.split(b"\r\n\r\n", 1)[0]
            self._head = email.message_from_bytes(head + b"\r\n\r\n", policy=email.policy.default)
        return [str(v) for v in self._head.get_all(name, [])]

    def attachments(self) -> list[email.message.EmailMessage]:
        return list(self.mime.iter_attachments()) if self.mime.is_multipart() else []

    def remove_attachments(self, which: Callable[[email.message.EmailMessage], bool]) -> int:
        """Remove every attachment (at any depth) for which `which(part)` is true; how many."""
        removed = 0
        gone: list[str] = []

        def prune(part: email.message.EmailMessage) -> None:
            nonlocal removed
            if not part.is_multipart():
                return
            payload = part.get_payload()
            assert isinstance(payload, list)
            kept: list[email.message.Message[str, str] | str] = []
            for child in payload:
                assert isinstance(child, email.message.EmailMessage)
                if child.get_content_disposition() == "attachment" and which(child):
                    removed += 1
                    gone.append(_describe(child))
                else:
                    prune(child)
                    kept.append(child)
            part.set_payload(kept)

        prune(self.mime)
        if removed:
            self.edited = True
            self.changes.append(("remove_attachments", tuple(gone)))
        return removed

    def replace_parts(
        self, which: Callable[[email.message.EmailMessage], bool], text: str, *, subtype: str = "plain", filename: str | None = None
    ) -> int:
        """Replace every part that is not itself multipart (at any depth) for which
        `which(part)` is true by a text part (an attachment if `filename` is given): a
        dangerous attachment by a note saying it was removed, say. Returns how many."""
        replaced = 0
        old: list[str] = []

        def walk(part: email.message.EmailMessage) -> None:
            nonlocal replaced
            payload = part.get_payload()
            assert isinstance(payload, list)
            for index, child in enumerate(payload):
                assert isinstance(child, email.message.EmailMessage)
                if child.is_multipart():
                    walk(child)
                elif which(child):
                    old.append(_describe(child))
                    new = email.message.EmailMessage(policy=email.policy.default)
                    new.set_content(text, subtype=subtype, disposition="attachment" if filename else "inline", filename=filename)
                    del new["MIME-Version"]  # set_content adds it; a part inside a message has none
                    payload[index] = new
                    replaced += 1

        if self.mime.is_multipart():
            walk(self.mime)
        if replaced:
            self.edited = True
            self.changes.append(("replace_parts", tuple(old)))
        return replaced

    def add_part(self, text: str, *, subtype: str = "plain", filename: str | None = None) -> None:
        """Add a text part (an attachment if `filename` is given), making the message multipart."""
        mime = self.mime
        if not mime.is_multipart():
            mime.make_mixed()
        if filename is None:
            mime.add_attachment(text, subtype=subtype, disposition="inline")
        else:
            mime.add_attachment(text, subtype=subtype, filename=filename)
        self.edited = True
        self.changes.append(("add_part", (filename or f"text/{subtype}",)))

    def edit_header(self, action: str, name: str, value: str = "") -> None:
        """add_header, set_header or remove_header on the raw bytes: the rest of the message
        stays byte for byte as it came (a DKIM signature over the body still verifies)."""
        raw = self.raw
        split = raw.find(b"\r\n\r\n")
        head, body = (raw[: split + 2], raw[split + 2 :]) if split >= 0 else (raw, b"")
        if action in ("set_header", "remove_header"):
            head = _without_header(head, name)
        if action in ("add_header", "set_header"):
            head = f"{name}: {value}\r\n".encode() + head
        self._raw, self._parsed, self._head = head + body, None, None


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
        return bool(address) and (not domain or domain in self.local_domains)

    def new_transaction(self) -> None:
        self.sender, self.recipients, self.mail_params, self.recipient, self.message = None, [], {}, "", None
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

    def set_route(self, recipient: str, route: str) -> None:
        """At delivery: deliver `recipient` by `route` ("local", "smtp", "smtp:[HOST]:PORT")
        instead of the route vsmtp chose (Postfix's transport maps)."""
        if self.stage != "delivery":
            raise ValueError(f"set_route at the {self.stage} stage: routes are chosen at the delivery stage")
        policy.check_route(route)  # checked now: ValueError names it
        self.actions.append(Action(self.stage, self.by, "set_route", (recipient, route)))

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


def _without_header(head: bytes, name: str) -> bytes:
    """The header section without the fields called `name` (continuation lines included)."""
    kept, dropping = [], False
    wanted = name.lower().encode()
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower() == wanted
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept)


def _describe(part: email.message.EmailMessage) -> str:
    """A part as the journal names it: its file name, or its type."""
    return part.get_filename() or part.get_content_type()


def _header_name(name: str) -> str:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"not a header name: {name!r}")
    return name


def _header_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("a header value may not hold line breaks (they would smuggle headers)")
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


def endpoint(host: str, port: int) -> Endpoint:
    return Endpoint(ipaddress.ip_address(host), port)
