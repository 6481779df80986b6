"""The message as rules and filters see it: the raw bytes, with a MIME view parsed only on
first use, and edits (headers on the raw bytes, parts through the MIME view) that make a new
message. Nothing here knows about sessions, the journal or the network."""

from __future__ import annotations

import email
import email.message
import email.policy
from collections.abc import Callable


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
