"""The message as rules and filters see it: the raw bytes, with a MIME view parsed only on
first use, and edits (headers on the raw bytes, parts through the MIME view) that make a new
message. Nothing here knows about sessions, the journal or the network."""

from __future__ import annotations

import email
import email.message
import email.policy
from collections.abc import Callable, Iterator

from .spill import Spill


class Message:
    """The message at data (and after): the raw bytes, with a MIME view parsed only when a
    rule asks for it. Edits (headers, parts) make a new message; `raw` is always current.

    A large message arrives partly spilled (mail/spill.py): the first octets in memory, the
    rest in a file. Its header section, header edits and `body_chunks` read no more than
    that; `raw`, `mime` and part edits read the whole message into memory (once)."""

    def __init__(self, raw: bytes, *, spill: Spill | None = None) -> None:
        self._raw = raw  # the message; with `spill`, its first octets
        self._spill = spill
        self._parsed: email.message.EmailMessage | None = None
        self._head: email.message.Message | None = None
        self.edited = False
        self.changes: list[tuple[str, tuple[str, ...]]] = []  # part edits not yet journaled (the engine takes them)

    @property
    def raw(self) -> bytes:
        if self._spill is not None:  # asked for whole: read into memory, once
            self._raw, self._spill = self._raw + self._spill.read(), None
        if self._parsed is not None and self.edited:
            self._raw = self._parsed.as_bytes(policy=email.policy.SMTP)  # only after a part edit
            self._parsed, self._head, self.edited = None, None, False
        return self._raw

    @property
    def size(self) -> int:
        return sum(map(len, self.parts()))

    def parts(self) -> tuple[bytes | Spill, ...]:
        """The message as it is to be stored: in memory, or its first octets and the spill."""
        if self._parsed is not None and self.edited:
            return (self.raw,)
        return (self._raw,) if self._spill is None else (self._raw, self._spill)

    def _first(self) -> bytes:
        first = self.parts()[0]
        assert isinstance(first, bytes)
        return first

    def _split(self) -> int:
        """Where the header section ends in the octets in memory (the CRLF of the empty line
        that ends it), or -1 when it does not end there (no body; or, spilled, a header
        section larger than what is in memory: then the whole message is read)."""
        end = self._first().find(b"\r\n\r\n")
        if end < 0 and self._spill is not None:
            self.raw  # noqa: B018 - read whole: the header section goes on past the memory
            end = self._raw.find(b"\r\n\r\n")
        return end if end < 0 else end + 2

    @property
    def head(self) -> bytes:
        """The header section: every field with its CRLF, without the empty line after it."""
        end = self._split()
        first = self._first()
        return first if end < 0 else first[:end]

    def with_head(self, head: bytes) -> Message:
        """The same message with another header section (the body, in memory or spilled, shared)."""
        end = self._split()
        first = self._first()
        rest = b"" if end < 0 else first[end:]
        return Message(head + rest, spill=self._spill if not (self._parsed is not None and self.edited) else None)

    def body_chunks(self) -> Iterator[bytes]:
        """The body (after the empty line), in pieces: for hashing it without a copy."""
        end = self._split()
        first = self._first()
        if end >= 0:
            yield first[end + 2 :]
        if self._spill is not None:
            yield from self._spill.chunks()

    @property
    def mime(self) -> email.message.EmailMessage:
        """The message parsed by the standard library (email.policy.default), on first use."""
        if self._parsed is None:
            parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
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
            self._head = email.message_from_bytes(self.head + b"\r\n", policy=email.policy.default)
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
        head = self.head
        if action in ("set_header", "remove_header"):
            head = _without_header(head, name)
        if action in ("add_header", "set_header"):
            head = f"{name}: {value}\r\n".encode() + head
        edited = self.with_head(head)
        self._raw, self._spill, self._parsed, self._head, self.edited = edited._raw, edited._spill, None, None, False


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
