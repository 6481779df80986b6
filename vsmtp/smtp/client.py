"""ClientConnection: the client side of SMTP as a pure state machine, the mirror of server.py.
No trio, no sockets, no clock.

Each command goes in through a method that checks it may be sent now and returns the bytes
to write; the bytes the server sends go in through receive_data(), which returns each
complete reply paired with the command it answers (an `Answer`) and moves the state on.
The connection knows what was offered (EHLO), whether TLS is on, and which commands still
wait for a reply, so the driver (net/outbound.py) cannot get the sequence wrong:

- MAIL needs a successful EHLO/HELO; RCPT needs MAIL; DATA needs a RCPT; the message needs
  DATA's 354; AUTH needs TLS (credentials never go in clear);
- more than one command in flight only when the server offered PIPELINING (RFC 2920), and
  EHLO, STARTTLS, AUTH, DATA, the message and QUIT end a group;
- STARTTLS's 220 discards whatever the server sent with it (RFC 3207 section 4.2: nothing
  read before TLS counts, the STARTTLS injection defence) and asks for EHLO again;
- a reply nobody asked for is the server's protocol error; 421 closes the connection.

    conn = ClientConnection()
    answers = conn.receive_data(greeting_bytes)   # [Answer("GREETING", Reply(220, ...))]
    sock.send(conn.ehlo("me.example"))

The reply reader (ReplyReader), EHLO's capabilities (Capabilities), MAIL's parameters
(mail_params) and dot-stuffing (dot_stuff) are here too, each usable on its own.
"""

from __future__ import annotations

import base64
import collections
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import LocalProtocolError, ProtocolError
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


# -- the connection -------------------------------------------------------------------------


class State(enum.Enum):
    GREETING = "greeting"  # waiting for the server's first word
    HELLO = "hello"  # greeted (or TLS just started): EHLO or HELO next
    READY = "ready"  # introduced: STARTTLS, AUTH, MAIL, RSET, QUIT
    TLS = "tls"  # STARTTLS took 220: the driver does the handshake, then tls_started()
    TRANSACTION = "transaction"  # MAIL sent: RCPT, DATA, RSET
    BODY = "body"  # DATA took 354: the message next
    CLOSED = "closed"  # QUIT answered, 421, or the greeting refused


@dataclass(frozen=True, slots=True)
class Answer:
    command: str  # GREETING, EHLO, HELO, STARTTLS, AUTH, MAIL, RCPT, DATA, MESSAGE, RSET, QUIT
    reply: Reply


_ENDS_GROUP = frozenset({"GREETING", "EHLO", "HELO", "LHLO", "STARTTLS", "AUTH", "DATA", "MESSAGE", "QUIT"})  # RFC 2920 3.1


class ClientConnection:
    def __init__(self) -> None:
        self.state = State.GREETING
        self.capabilities = Capabilities.none()
        self.tls = False
        self.authenticated = False
        self.recipients_sent = 0
        self.recipients_accepted = 0  # RCPTs the server took in this transaction
        self._reader = ReplyReader()
        self._awaiting: collections.deque[str] = collections.deque(["GREETING"])

    @property
    def awaiting(self) -> int:
        """Commands sent (or the greeting) whose reply has not come yet."""
        return len(self._awaiting)

    # -- commands: each returns the bytes to send ----------------------------------------------

    def ehlo(self, name: str) -> bytes:
        self._expect(State.HELLO, "EHLO")
        return self._send("EHLO", f"EHLO {name}\r\n".encode())

    def helo(self, name: str) -> bytes:
        self._expect(State.HELLO, "HELO")
        return self._send("HELO", f"HELO {name}\r\n".encode())

    def starttls(self) -> bytes:
        self._expect(State.READY, "STARTTLS")
        if self.tls or not self.capabilities.has("STARTTLS"):
            raise LocalProtocolError("STARTTLS was not offered" if not self.tls else "TLS is already on")
        return self._send("STARTTLS", b"STARTTLS\r\n")

    def tls_started(self) -> None:
        """The driver finished the TLS handshake after STARTTLS's 220: start over with EHLO."""
        self._expect(State.TLS, "a TLS handshake")
        self.tls = True
        self.capabilities = Capabilities.none()  # RFC 3207 4.2: forget what was said before TLS
        self.authenticated = False
        self._reader = ReplyReader()
        self.state = State.HELLO

    def implicit_tls(self) -> None:
        """The connection is TLS from its first byte (smtps, RFC 8314): set before the greeting."""
        self._expect(State.GREETING, "implicit TLS")
        self.tls = True

    def auth_plain(self, username: str, password: str) -> bytes:
        """AUTH PLAIN with its initial response (RFC 4954, RFC 4616); only over TLS."""
        self._expect(State.READY, "AUTH")
        if not self.tls:
            raise LocalProtocolError("credentials go only over TLS")
        token = base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode()).decode()
        return self._send("AUTH", f"AUTH PLAIN {token}\r\n".encode())

    def mail(self, reverse_path: str, params: Iterable[str] = ()) -> bytes:
        self._expect(State.READY, "MAIL")
        self.recipients_sent = self.recipients_accepted = 0
        sent = self._send("MAIL", _with_params(f"MAIL FROM:<{reverse_path}>", params))
        self.state = State.TRANSACTION  # pipelined RCPTs may follow before the reply
        return sent

    def rcpt(self, forward_path: str, params: Iterable[str] = ()) -> bytes:
        self._expect(State.TRANSACTION, "RCPT")
        self.recipients_sent += 1
        return self._send("RCPT", _with_params(f"RCPT TO:<{forward_path}>", params))

    def data(self) -> bytes:
        self._expect(State.TRANSACTION, "DATA")
        if not self.recipients_sent:
            raise LocalProtocolError("DATA without a recipient")
        return self._send("DATA", b"DATA\r\n")

    def message(self, body: bytes) -> bytes:
        """The message, dot-stuffed and ended, once DATA took 354."""
        self._expect(State.BODY, "the message")
        return self._send("MESSAGE", dot_stuff(body) if body else b".\r\n")

    def rset(self) -> bytes:
        if self.state not in (State.READY, State.TRANSACTION):
            raise LocalProtocolError(f"RSET in state {self.state.value}")
        return self._send("RSET", b"RSET\r\n")

    def quit(self) -> bytes:
        if self.state in (State.CLOSED, State.TLS, State.BODY):
            raise LocalProtocolError(f"QUIT in state {self.state.value}")
        return self._send("QUIT", b"QUIT\r\n")

    # -- replies -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Answer]:
        """The replies in `data`, each with the command it answers. Raises ProtocolError for
        what is not a reply, or a reply nothing waits for."""
        if self.state is State.TLS:
            return []  # sent in the clear after 220, before the handshake: discarded (RFC 3207)
        answers = []
        for reply in self._reader.feed(data):
            if not self._awaiting:
                raise ProtocolError(f"a reply nothing asked for: {reply}")
            answer = Answer(self._awaiting.popleft(), reply)
            self._advance(answer)
            answers.append(answer)
            if answer.command == "STARTTLS" and answer.reply.code == 220:
                self._reader = ReplyReader()  # the rest of this read is discarded with it
                break
        return answers

    def _advance(self, answer: Answer) -> None:
        code = answer.reply.code
        command = answer.command
        if code == 421 or command == "QUIT" or (command == "GREETING" and code // 100 != 2):
            self.state = State.CLOSED
            self._awaiting.clear()
        elif command == "GREETING":
            self.state = State.HELLO
        elif command in ("EHLO", "HELO", "LHLO"):
            if code // 100 == 2:
                self.capabilities = Capabilities.from_ehlo(answer.reply) if command != "HELO" else Capabilities.none()
                self.state = State.READY
        elif command == "STARTTLS":
            if code == 220:
                self.state = State.TLS
        elif command == "AUTH":
            self.authenticated = code == 235
        elif command == "RCPT":
            self.recipients_accepted += code // 100 == 2
        elif command == "MAIL":
            if code // 100 != 2 and not self._awaiting:
                self.state = State.READY  # nothing pipelined behind it: the transaction never began
        elif command == "DATA":
            # 354: the message next. Anything else: the transaction is over (RFC 5321 3.3).
            self.state = State.BODY if code == 354 else State.READY
        elif command in ("MESSAGE", "RSET"):
            self.state = State.READY

    # -- helpers -------------------------------------------------------------------------------

    def _expect(self, state: State, what: str) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"{what} in state {self.state.value}")

    def _send(self, command: str, data: bytes) -> bytes:
        if self._awaiting:
            waiting = self._awaiting[-1]
            if not self.capabilities.has("PIPELINING"):
                raise LocalProtocolError(f"{command} before the reply to {waiting}: the server did not offer PIPELINING")
            if waiting in _ENDS_GROUP:
                raise LocalProtocolError(f"{command} after {waiting} before its reply (RFC 2920 3.1)")
        if self.state is State.BODY and command != "MESSAGE":
            raise LocalProtocolError(f"{command} while the server waits for the message")
        self._awaiting.append(command)
        return data


def _with_params(command: str, params: Iterable[str]) -> bytes:
    return (" ".join([command, *params]) + "\r\n").encode("utf-8")


class Unsupported(Exception):
    """The message needs what the server does not offer; the text says what, `status` the
    RFC 3463 code."""

    def __init__(self, text: str, status: str) -> None:
        super().__init__(text)
        self.status = status


def mail_params(capabilities: Capabilities, *, size: int, eight_bit: bool, smtputf8: bool, requiretls: bool = False) -> list[str]:
    """MAIL's parameters for a message (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC
    8689 REQUIRETLS), or Unsupported when the server cannot take it."""
    limit = capabilities.size_limit
    if limit is not None and size > limit:
        raise Unsupported(f"message size {size} exceeds the server's limit {limit}", "5.3.4")
    params = [f"SIZE={size}"] if capabilities.has("SIZE") else []
    if eight_bit:
        if not capabilities.has("8BITMIME"):
            raise Unsupported("the message has 8-bit data and the server does not offer 8BITMIME", "5.6.3")
        params.append("BODY=8BITMIME")
    if smtputf8:
        if not capabilities.has("SMTPUTF8"):
            raise Unsupported("the message needs SMTPUTF8 and the server does not offer it", "5.6.7")  # RFC 6531 3.5
        params.append("SMTPUTF8")
    if requiretls:
        if not capabilities.has("REQUIRETLS"):
            raise Unsupported("the message requires TLS all the way (REQUIRETLS) and the server does not offer REQUIRETLS", "5.7.30")
        params.append("REQUIRETLS")
    return params


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
