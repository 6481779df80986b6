"""Sans-IO SMTP client pieces: the mirror of server.py. No trio, no sockets, no clock.

- ReplyReader turns the bytes a server sends into Reply objects (RFC 5321 4.2: a multi-line
  reply is "250-..." lines ended by "250 ..."), with limits on what a peer may send.
- Capabilities reads an EHLO reply (RFC 5321 4.1.1.1): keywords and their parameters.
- Commands are built here, so the driver (net/outbound.py) never formats protocol text.
- dot_stuff prepares a message for DATA (RFC 5321 4.5.2).

    reader = ReplyReader()
    replies = reader.feed(bytes_from_the_server)      # zero or more complete replies
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ProtocolError
from .replies import Reply

MAX_LINE = 4096  # longer than RFC 5321's 512 for replies, with room for long EHLO lines
MAX_LINES = 200  # lines in one reply
_LINE = re.compile(rb"^(\d{3})(?:([ -])(.*))?$", re.DOTALL)  # "250" alone is a last line too
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3}) (.*)$", re.DOTALL)


class ReplyReader:
    """Bytes in, replies out. Raises ProtocolError on a line that is not a reply."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._code = 0

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        replies: list[Reply] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise ProtocolError("reply line too long")
                return replies
            if end > MAX_LINE:
                raise ProtocolError("reply line too long")
            raw = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            match = _LINE.match(raw)
            if match is None:
                raise ProtocolError(f"not an SMTP reply: {raw[:80]!r}")
            code = int(match.group(1))
            if self._lines and code != self._code:
                raise ProtocolError(f"reply code changed from {self._code} to {code} inside one reply")
            self._code = code
            self._lines.append((match.group(3) or b"").decode("utf-8", "replace"))
            if len(self._lines) > MAX_LINES:
                raise ProtocolError("reply has too many lines")
            if match.group(2) != b"-":
                replies.append(_reply(code, self._lines))
                self._lines = []


def _reply(code: int, lines: list[str]) -> Reply:
    """A Reply, with its enhanced status code (RFC 3463) split off when every line has one."""
    found = [_ENHANCED.match(line) for line in lines]
    if all(found) and found:
        enhanced = found[0].group(1)  # type: ignore[union-attr]
        return Reply(code, enhanced, tuple(m.group(2) for m in found if m is not None))
    return Reply(code, None, tuple(lines))


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a server said it supports in its EHLO reply (upper-cased keywords)."""

    keywords: dict[str, str]  # keyword -> parameters ("" when none)

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Capabilities:
        keywords = {}
        for line in reply.lines[1:]:  # the first line is the greeting
            keyword, _, params = line.strip().partition(" ")
            if keyword:
                keywords[keyword.upper()] = params.strip()
        return cls(keywords)

    @classmethod
    def none(cls) -> Capabilities:
        """After HELO: plain RFC 821, no extension."""
        return cls({})

    def has(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def size_limit(self) -> int | None:
        """The SIZE the server declared (RFC 1870); None if none or unlimited (0)."""
        value = self.keywords.get("SIZE", "")
        return int(value) if value.isdigit() and int(value) > 0 else None


# -- commands ----------------------------------------------------------------------------------


def ehlo(name: str) -> bytes:
    return f"EHLO {name}\r\n".encode()


def helo(name: str) -> bytes:
    return f"HELO {name}\r\n".encode()


def mail_from(reverse_path: str, params: Iterable[str] = ()) -> bytes:
    return _with_params(f"MAIL FROM:<{reverse_path}>", params)


def rcpt_to(forward_path: str, params: Iterable[str] = ()) -> bytes:
    return _with_params(f"RCPT TO:<{forward_path}>", params)


def _with_params(command: str, params: Iterable[str]) -> bytes:
    return (" ".join([command, *params]) + "\r\n").encode("utf-8")


def auth_plain(username: str, password: str) -> bytes:
    """AUTH PLAIN with its initial response (RFC 4954, RFC 4616)."""
    token = base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode()).decode()
    return f"AUTH PLAIN {token}\r\n".encode()


DATA = b"DATA\r\n"
STARTTLS = b"STARTTLS\r\n"
QUIT = b"QUIT\r\n"
RSET = b"RSET\r\n"


def dot_stuff(message: bytes) -> bytes:
    """The message as DATA sends it: CRLF line ends kept, a leading "." doubled on every line
    (RFC 5321 4.5.2), a final CRLF ensured, then the ".\\r\\n" that ends the data."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def needs_8bit(message: bytes) -> bool:
    """Whether the message has octets above 127 (8BITMIME, RFC 6152)."""
    return not message.isascii()
