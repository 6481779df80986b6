"""ServerConnection: the server side of SMTP as a pure state machine (h11's shape).

Bytes go in with receive_data(); next_event() returns one event at a time; the application
answers each command with send(reply), and that reply decides the next state through
TRANSITIONS. Out-of-sequence and malformed commands come back as `Invalid` events carrying
the reply to send. No I/O, no clock, no trio here.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from . import events as ev
from . import replies
from .errors import LocalProtocolError
from .parsing import (
    MAX_ENVID,
    ContentScanner,
    PathError,
    check_notify,
    check_orcpt,
    check_xtext,
    parse_params,
    parse_path,
    split_path_and_params,
)
from .replies import Reply
from .states import TRANSITIONS, State, out_of_sequence_reply

# RFC 5321 4.5.3.1.4 sets 512 octets as the minimum a server must accept; ESMTP parameters
# (SIZE, BODY, SMTPUTF8, DSN's ORCPT and ENVID) make real commands longer, so we accept up to
# 2048, as Postfix's line_length_limit does.
MAX_COMMAND_LINE = 2048
MAX_TEXT_LINE = 1000  # RFC 5321 4.5.3.1.6, the CRLF included
MAX_BDAT_DIGITS = 20  # a chunk size beyond 10**20 octets is not a number we discuss


@dataclass(frozen=True, slots=True, kw_only=True)
class Extensions:
    """What this server offers after EHLO; the connection enforces what it advertises."""

    max_message_size: int = 50 * 1024 * 1024  # SIZE (RFC 1870); 0 means no limit
    pipelining: bool = True  # RFC 2920
    eight_bit_mime: bool = True  # RFC 6152
    smtputf8: bool = True  # RFC 6531
    enhanced_status_codes: bool = True  # RFC 2034
    chunking: bool = True  # RFC 3030
    dsn: bool = True  # RFC 3461
    starttls: bool = False  # RFC 3207: only where a certificate is available
    auth: tuple[str, ...] = ()  # SASL mechanisms (RFC 4954), offered only once TLS is active
    requiretls: bool = True  # RFC 8689: offered only once TLS is active

    def keywords(self, *, tls_active: bool = False) -> list[str]:
        words = []
        if self.pipelining:
            words.append("PIPELINING")
        words.append(f"SIZE {self.max_message_size}" if self.max_message_size else "SIZE")
        if self.eight_bit_mime:
            words.append("8BITMIME")
        if self.starttls and not tls_active:
            words.append("STARTTLS")
        if self.auth and tls_active:
            words.append("AUTH " + " ".join(self.auth))
        if self.enhanced_status_codes:
            words.append("ENHANCEDSTATUSCODES")
        if self.dsn:
            words.append("DSN")
        if self.smtputf8:
            words.append("SMTPUTF8")
        if self.chunking:
            words.append("CHUNKING")
        if self.requiretls and tls_active:
            words.append("REQUIRETLS")
        return words


# C0 controls and DEL, C1 controls (NEL among them), zero-width and bidirectional format
# characters, the line and paragraph separators, the byte order mark.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")

_VERBS: dict[str, type[ev.Command]] = {
    "HELO": ev.Helo,
    "EHLO": ev.Ehlo,
    "MAIL": ev.MailFrom,
    "RCPT": ev.RcptTo,
    "DATA": ev.Data,
    "BDAT": ev.Bdat,
    "RSET": ev.Rset,
    "NOOP": ev.Noop,
    "QUIT": ev.Quit,
    "VRFY": ev.Vrfy,
    "EXPN": ev.Expn,
    "HELP": ev.Help,
    "STARTTLS": ev.StartTls,
    "AUTH": ev.Auth,
}
_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}\Z")  # RFC 4422 3.1 sasl-mech


def _decode_base64(text: str) -> bytes | None:
    """A SASL response in base64 (RFC 4954 4), "=" for an empty one; None if it is not base64."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


class ServerConnection:
    def __init__(
        self,
        *,
        extensions: Extensions | None = None,
        max_command_line: int = MAX_COMMAND_LINE,
        max_text_line: int = MAX_TEXT_LINE,
        tls: bool = False,
    ) -> None:
        self.extensions = extensions or Extensions()
        self.max_command_line = max_command_line
        self.max_text_line = max_text_line
        self.tls = tls  # TLS is active on the transport (implicit TLS, or after STARTTLS)
        self.authenticated = False  # AUTH succeeded (235); no second AUTH in the session
        self.state = State.CONNECTED
        self.esmtp = False  # EHLO (not HELO) was accepted: ESMTP parameters are allowed
        self._utf8 = False  # the open transaction's MAIL carried SMTPUTF8
        self._buf = bytearray()
        self._eof = False
        self._owed: ev.Event | None = None  # the event whose reply has not been sent yet
        self._discarding = False  # dropping the rest of an over-long command line
        self._data_bol = False  # in DATA: the next byte starts a line
        self._scanner = ContentScanner(max_text_line)
        self._chunk_left = 0  # BDAT: octets of the current chunk still to come
        self._chunk_event: ev.Bdat | ev.BdatLast | ev.Invalid | None = None  # owed once it is read
        self._chunk_keep = False  # BDAT: pass the chunk on (False: discard a refused chunk)

    # -- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the peer; b"" means the peer closed its side."""
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> ev.Event | ev.Sentinel:
        if self._owed is not None:
            return ev.PAUSED
        if self.state is State.CLOSED:
            return ev.ConnectionClosed()
        if self._chunk_event is not None:
            event: ev.Event | None = self._next_chunk_event()
        elif self.state is State.DATA:
            event = self._next_data_event()
        else:
            event = self._next_command()
        if event is None:
            if self._eof:
                self.state = State.CLOSED
                return ev.ConnectionClosed()
            return ev.NEED_DATA
        if not isinstance(event, ev.DataChunk):
            self._owed = event
        return event

    @property
    def trailing_data(self) -> bytes:
        """Bytes received but not yet turned into events."""
        return bytes(self._buf)

    # -- output ----------------------------------------------------------------------------

    def send(self, reply: Reply) -> bytes:
        """Answer the owed event (or send the greeting) and move to the state the reply implies."""
        if self.state is State.CONNECTED:
            self.state = State.GREETED if reply.positive else State.CLOSED
            return reply.to_bytes()
        owed = self._owed
        if owed is None:
            raise LocalProtocolError(f"no command is waiting for a reply (state {self.state.value})")
        self._owed = None
        on_success, on_failure = TRANSITIONS[self.state][type(owed)]
        new = on_success if reply.positive else on_failure
        if isinstance(owed, ev.Auth | ev.AuthResponse) and reply.code != 334:
            new = State.READY  # only a 334 challenge goes on; 235 and any failure end the exchange
            self.authenticated = reply.code == 235
        if reply.code == 421:  # RFC 5321 3.8: the server closes after 421
            new = State.CLOSED
        if reply.positive:
            if isinstance(owed, ev.Ehlo | ev.Helo):
                self.esmtp = isinstance(owed, ev.Ehlo)
            elif isinstance(owed, ev.MailFrom):
                self._utf8 = "SMTPUTF8" in owed.params
                self._scanner = ContentScanner(self.max_text_line)
            elif isinstance(owed, ev.StartTls):
                # RFC 3207 4.2 and CVE-2011-0411: whatever the client pipelined behind STARTTLS
                # was sent in clear and is dropped unread; the session starts again at EHLO.
                self._buf.clear()
                self.tls, self.esmtp, self.authenticated = True, False, False
        if new is State.DATA:
            self._data_bol = True
        self.state = new
        return reply.to_bytes()

    # -- commands --------------------------------------------------------------------------

    def _next_line(self) -> bytes | ev.Invalid | None:
        buf = self._buf
        while self._discarding:
            end = buf.find(b"\r\n")
            if end < 0:
                keep = 1 if buf.endswith(b"\r") else 0
                del buf[: len(buf) - keep]
                return None
            line = bytes(buf[: min(end, 80)])
            del buf[: end + 2]
            self._discarding = False
            return ev.Invalid(line=line, reply=replies.LINE_TOO_LONG)
        end = buf.find(b"\r\n", 0, self.max_command_line)
        if end < 0:
            if len(buf) >= self.max_command_line:
                self._discarding = True
                return self._next_line()
            return None
        line = bytes(buf[:end])
        del buf[: end + 2]
        return line

    def _next_command(self) -> ev.Event | None:
        line = self._next_line()
        if line is None or isinstance(line, ev.Invalid):
            return line
        if self.state is State.AUTH:
            return self._auth_response(line)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return ev.Invalid(line=line, reply=replies.BAD_UTF8)
        if "\r" in text or "\n" in text:
            # RFC 5321 2.3.8: only CRLF ends a line; a bare CR or LF is never a terminator.
            return ev.Invalid(line=line, reply=replies.BAD_LINE_ENDING)
        if _FORBIDDEN.search(text):
            # NUL and the other controls, C1 controls, line and paragraph separators and
            # invisible format characters have no place in a command: they would be copied
            # into Received: or Return-Path:, where they mislead whoever reads them.
            return ev.Invalid(line=line, reply=replies.CONTROL_CHARACTER)
        verb, _, argument = text.partition(" ")
        kind = _VERBS.get(verb.upper())
        if kind is None:
            return ev.Invalid(line=line, reply=replies.UNKNOWN_COMMAND)
        if kind is ev.Bdat:
            return self._start_chunk(line, argument.strip(" "))
        if kind is ev.StartTls and (not self.extensions.starttls or self.tls):
            return ev.Invalid(line=line, reply=replies.TLS_ALREADY_ACTIVE if self.tls else replies.NOT_IMPLEMENTED)
        if kind is ev.Auth and (problem := self._auth_refusal()) is not None:
            return ev.Invalid(line=line, reply=problem)
        if kind not in TRANSITIONS[self.state]:
            return ev.Invalid(line=line, reply=out_of_sequence_reply(self.state, kind))
        result = self._parse(kind, argument.strip(" "))
        if isinstance(result, Reply):
            return ev.Invalid(line=line, reply=result)
        return result

    def _parse(self, kind: type[ev.Command], arg: str) -> ev.Command | Reply:
        if kind is ev.Helo or kind is ev.Ehlo:
            if not arg:
                return replies.syntax(f"{'HELO' if kind is ev.Helo else 'EHLO'} hostname")
            return kind(domain=arg)
        if kind is ev.MailFrom:
            return self._parse_mail(arg)
        if kind is ev.RcptTo:
            return self._parse_rcpt(arg)
        if kind in (ev.Vrfy, ev.Expn):
            if not arg:
                return replies.syntax(f"{kind.__name__.upper()} address")
            return kind(argument=arg)
        if kind is ev.Help:
            return ev.Help(argument=arg)
        if kind is ev.Auth:
            return self._parse_auth(arg)
        if arg and kind is not ev.Noop:  # RFC 5321 4.1.1.9: NOOP may carry a string
            return replies.syntax(kind.__name__.upper())
        return kind()

    def _parse_mail(self, arg: str) -> ev.MailFrom | Reply:
        try:
            path, param_text = split_path_and_params(arg, "FROM:")
        except PathError as exc:
            return replies.bad_sender(str(exc))
        try:
            params = parse_params(param_text)
        except PathError as exc:
            return replies.bad_parameter(str(exc))
        problem = self._check_mail_params(params)
        if problem is not None:
            return problem
        try:
            address = parse_path(path, utf8="SMTPUTF8" in params, null_ok=True, postmaster_ok=False)
        except PathError as exc:
            return replies.bad_sender(str(exc))
        return ev.MailFrom(reverse_path=address, params=params)

    def _check_mail_params(self, params: dict[str, str | None]) -> Reply | None:
        x = self.extensions
        for key, value in params.items():
            if not self.esmtp:
                return replies.unknown_parameter(key)  # HELO sessions have no extensions
            try:
                if key == "SIZE":  # RFC 1870 6
                    if value is None or not value.isdigit() or len(value) > 20:
                        return replies.bad_parameter("SIZE needs a number")
                    if x.max_message_size and int(value) > x.max_message_size:
                        return replies.SIZE_EXCEEDS_LIMIT
                elif key == "BODY" and x.eight_bit_mime:  # RFC 6152
                    if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                        return replies.bad_parameter("BODY is 7BIT or 8BITMIME")
                elif key == "SMTPUTF8" and x.smtputf8:  # RFC 6531 3.4
                    if value is not None:
                        return replies.bad_parameter("SMTPUTF8 takes no value")
                elif key == "RET" and x.dsn:  # RFC 3461 4.3
                    if value is None or value.upper() not in ("FULL", "HDRS"):
                        return replies.bad_parameter("RET is FULL or HDRS")
                elif key == "ENVID" and x.dsn:  # RFC 3461 4.4
                    if value is None or len(value) > MAX_ENVID:
                        return replies.bad_parameter(f"ENVID is 1 to {MAX_ENVID} characters")
                    check_xtext(value, "ENVID")
                elif key == "REQUIRETLS" and x.requiretls and self.tls:  # RFC 8689 3: over TLS only, else unknown
                    if value is not None:
                        return replies.bad_parameter("REQUIRETLS takes no value")
                elif key == "AUTH" and x.auth:  # RFC 4954 5: accepted, never trusted
                    if value is None:
                        return replies.bad_parameter("AUTH needs <> or an address")
                    check_xtext(value, "AUTH")
                else:
                    return replies.unknown_parameter(key)
            except PathError as exc:
                return replies.bad_parameter(str(exc))
        return None

    def _parse_rcpt(self, arg: str) -> ev.RcptTo | Reply:
        try:
            path, param_text = split_path_and_params(arg, "TO:")
            address = parse_path(path, utf8=self._utf8, null_ok=False, postmaster_ok=True)
        except PathError as exc:
            return replies.bad_recipient(str(exc))
        try:
            params = parse_params(param_text)
        except PathError as exc:
            return replies.bad_parameter(str(exc))
        for key, value in params.items():
            if not (self.esmtp and self.extensions.dsn and key in ("NOTIFY", "ORCPT")):
                return replies.unknown_parameter(key)
            try:
                if value is None:
                    raise PathError(f"{key} needs a value")
                (check_notify if key == "NOTIFY" else check_orcpt)(value)
            except PathError as exc:
                return replies.bad_parameter(str(exc))
        return ev.RcptTo(forward_path=address, params=params)

    # -- AUTH (RFC 4954) ------------------------------------------------------------------

    def _auth_refusal(self) -> Reply | None:
        """Why AUTH cannot start here, before its sequence is looked at (None: it may)."""
        if not self.extensions.auth:
            return replies.AUTH_NOT_ENABLED
        if not self.tls:
            return replies.AUTH_NEEDS_TLS  # credentials never cross the network in clear
        if self.authenticated:
            return replies.ALREADY_AUTHENTICATED  # RFC 4954 4: once per session
        if self.state is State.READY and not self.esmtp:
            return replies.NEED_EHLO  # AUTH is an ESMTP extension: not after HELO
        return None

    def _parse_auth(self, arg: str) -> ev.Auth | Reply:
        mechanism, _, initial = arg.partition(" ")
        mechanism, initial = mechanism.upper(), initial.strip(" ")
        if not _MECHANISM.match(mechanism) or " " in initial:
            return replies.syntax("AUTH mechanism [initial-response]")
        if mechanism not in self.extensions.auth:
            return replies.UNKNOWN_MECHANISM
        if not initial:
            return ev.Auth(mechanism=mechanism)
        data = _decode_base64(initial)
        if data is None:
            return replies.CANNOT_DECODE
        return ev.Auth(mechanism=mechanism, initial=data)

    def _auth_response(self, line: bytes) -> ev.AuthResponse | ev.Invalid:
        text = line.decode("ascii", "replace").strip(" ")
        if text == "*":
            return ev.AuthResponse(cancelled=True)
        data = _decode_base64(text)
        if data is None:
            return ev.Invalid(line=line, reply=replies.CANNOT_DECODE)
        return ev.AuthResponse(data=data)

    # -- BDAT (RFC 3030) -------------------------------------------------------------------

    def _start_chunk(self, line: bytes, arg: str) -> ev.Event | None:
        size_text, _, rest = arg.partition(" ")
        last = rest.strip(" ").upper() == "LAST"
        if not size_text.isdigit() or len(size_text) > MAX_BDAT_DIGITS or (rest.strip(" ") and not last):
            # Without a size we cannot tell the chunk from commands: answer, and hope.
            return ev.Invalid(line=line, reply=replies.syntax("BDAT size [LAST]"))
        size = int(size_text)
        kind = ev.BdatLast if last else ev.Bdat
        if not (self.esmtp and self.extensions.chunking):
            event: ev.Bdat | ev.BdatLast | ev.Invalid = ev.Invalid(line=line, reply=replies.NOT_IMPLEMENTED)
        elif kind not in TRANSITIONS[self.state]:
            event = ev.Invalid(line=line, reply=out_of_sequence_reply(self.state, kind))
        else:
            event = ev.Bdat(size=size) if not last else ev.BdatLast(size=size)
        # The chunk's octets follow whatever we answer: read them all, keep only a legal one's.
        self._chunk_left, self._chunk_event = size, event
        self._chunk_keep = not isinstance(event, ev.Invalid)
        return self._next_chunk_event()

    def _next_chunk_event(self) -> ev.Event | None:
        if self._chunk_left:
            take = min(self._chunk_left, len(self._buf))
            if take == 0:
                return None
            data = bytes(self._buf[:take])
            del self._buf[:take]
            self._chunk_left -= take
            if self._chunk_keep:
                self._scanner.feed(data)
                return ev.DataChunk(data=data)
            if self._chunk_left:
                return None if not self._buf else self._next_chunk_event()
        event, self._chunk_event = self._chunk_event, None
        if isinstance(event, ev.BdatLast):
            scan = self._scanner
            event = ev.BdatLast(size=event.size, bare_line_endings=scan.bare_line_endings, long_line=scan.long_line)
        return event

    # -- DATA (RFC 5321 4.1.1.4) -----------------------------------------------------------

    def _next_data_event(self) -> ev.DataChunk | ev.DataEnd | None:
        """Content up to the next line that starts with a dot, in one piece (RFC 5321 4.5.2).

        Only CRLF "." CRLF ends the message, so no bare-LF or bare-CR variant can end it or
        smuggle a second one. The buffer is searched with bytes.find, never walked by line.
        """
        buf = self._buf
        if self._data_bol:
            if buf[:1] == b".":
                if buf[:3] == b".\r\n":
                    del buf[:3]
                    scan = self._scanner
                    return ev.DataEnd(bare_line_endings=scan.bare_line_endings, long_line=scan.long_line)
                if len(buf) < 3 and b".\r\n".startswith(buf):
                    return None  # could still be the end marker
                del buf[:1]  # a stuffed dot: the client doubled it (4.5.2)
            elif not buf:
                return None
            self._data_bol = False
        cut = buf.find(b"\r\n.")
        if cut >= 0:
            end = cut + 2
            self._data_bol = True
        elif buf.endswith(b"\r\n"):
            end = len(buf)
            self._data_bol = True
        else:
            end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)  # keep a CR for its LF
        if end == 0:
            return None
        chunk = bytes(buf[:end])
        del buf[:end]
        self._scanner.feed(chunk)
        return ev.DataChunk(data=chunk)
