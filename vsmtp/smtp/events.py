"""What a client can say on the wire, as ServerConnection.next_event() returns it.

Commands are nouns for what was said (MailFrom), not what we did about it. Every command,
every `Invalid` line and `DataEnd` is owed exactly one reply through ServerConnection.send;
`DataChunk` and `ConnectionClosed` are not answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .replies import Reply


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data()
    PAUSED = "PAUSED"  # a reply is owed for the last event: send() it first


NEED_DATA: Final = _Sentinel.NEED_DATA
PAUSED: Final = _Sentinel.PAUSED
Sentinel = _Sentinel


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """Base of every client command."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Helo(Command):
    domain: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ehlo(Command):
    domain: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MailFrom(Command):
    reverse_path: str  # "" for the null reverse-path <>
    params: Mapping[str, str | None] = field(default_factory=dict)  # upper-cased keywords


@dataclass(frozen=True, slots=True, kw_only=True)
class RcptTo(Command):
    forward_path: str  # "postmaster" alone is the RFC 5321 4.1.1.3 special case
    params: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Data(Command):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Bdat(Command):
    """A BDAT chunk that is not the last (RFC 3030); its content came just before as DataChunks."""

    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BdatLast(Command):
    """BDAT ... LAST: the message is complete; answer with the transaction's outcome.

    The flags are as for DataEnd, over the content of every chunk of the message.
    """

    size: int
    bare_line_endings: bool = False
    long_line: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTls(Command):
    """STARTTLS (RFC 3207). After a 220, start the TLS handshake on the transport."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth(Command):
    """AUTH mechanism [initial-response] (RFC 4954 4). `initial` is the decoded initial
    response (b"" for "="), None when the client sent none."""

    mechanism: str  # upper-cased, one the server offers
    initial: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResponse(Command):
    """The line a client sends after a 334 challenge, decoded; `cancelled` for "*" (RFC 4954 4)."""

    data: bytes = b""
    cancelled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Rset(Command):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Noop(Command):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Quit(Command):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Vrfy(Command):
    argument: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Expn(Command):
    argument: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Help(Command):
    argument: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Invalid:
    """A line the protocol layer refused by itself; answer it with `reply` (or a stricter one)."""

    line: bytes
    reply: Reply


@dataclass(frozen=True, slots=True, kw_only=True)
class DataChunk:
    """Message content in order: after DATA dot-unstuffed, without the end marker; after BDAT
    the raw octets of the chunk."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DataEnd:
    """The CRLF.CRLF that ends DATA was received; answer with the transaction's outcome.

    bare_line_endings is true when the content held a CR or LF that was not part of a CRLF
    (RFC 5321 2.3.8); such a message must be refused or normalised, never passed on as is.
    long_line is true when a line was longer than the connection's max_text_line.
    """

    bare_line_endings: bool
    long_line: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """The peer closed its side; nothing more will come."""


Event = Command | Invalid | DataChunk | DataEnd | ConnectionClosed
