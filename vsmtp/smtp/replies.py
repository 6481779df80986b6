"""Every reply vsmtp sends, named once; code and tests use these names.

Each carries an enhanced status code (RFC 3463, advertised per RFC 2034) except the greeting
and the EHLO/HELO replies, where RFC 2034 section 3 does not use them.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str | None
    lines: tuple[str, ...]

    @classmethod
    def of(cls, code: int, enhanced: str | None, *lines: str) -> Reply:
        return cls(code, enhanced, tuple(lines) or ("",))

    @property
    def positive(self) -> bool:
        """2xx and 3xx: the command was accepted (RFC 5321 4.2.1)."""
        return 200 <= self.code < 400

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    def __str__(self) -> str:
        prefix = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        return prefix + self.text

    def to_bytes(self) -> bytes:
        out = []
        last = len(self.lines) - 1
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            enhanced = f"{self.enhanced} " if self.enhanced else ""
            out.append(f"{self.code}{sep}{enhanced}{line}\r\n")
        return "".join(out).encode("utf-8")


def said(code: int, enhanced: str, text: str) -> str:
    """A reply as a log or notice quotes it: "550 5.1.1 no such user"; our own words alone
    when no server answered (code 0)."""
    return " ".join(str(part) for part in (code or "", enhanced if code else "", text) if part)


def greeting(hostname: str) -> Reply:
    return Reply.of(220, None, f"{hostname} ESMTP vsmtp")


def ehlo(hostname: str, client: str, keywords: Sequence[str]) -> Reply:
    return Reply.of(250, None, f"{hostname} greets {client}", *keywords)


def helo(hostname: str) -> Reply:
    return Reply.of(250, None, hostname)


def queued(queue_id: str) -> Reply:
    return Reply.of(250, "2.0.0", f"Ok: queued as {queue_id}")


def bye() -> Reply:
    return Reply.of(221, "2.0.0", "Bye")


OK = Reply.of(250, "2.0.0", "Ok")
SENDER_OK = Reply.of(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply.of(250, "2.1.5", "Ok")
START_DATA = Reply.of(354, None, "End data with <CR><LF>.<CR><LF>")
HELP = Reply.of(214, "2.0.0", "See https://www.rfc-editor.org/rfc/rfc5321")
CANNOT_VRFY = Reply.of(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")

# 5.5.x: protocol errors detected by the sans-IO layer.
UNKNOWN_COMMAND = Reply.of(500, "5.5.1", "Error: command not recognized")
LINE_TOO_LONG = Reply.of(500, "5.5.2", "Error: line too long")
BAD_LINE_ENDING = Reply.of(500, "5.5.2", "Error: bare CR or LF in command line")
BAD_UTF8 = Reply.of(500, "5.5.2", "Error: command line is not valid UTF-8")
CONTROL_CHARACTER = Reply.of(501, "5.5.4", "Error: control or invisible character in command arguments")
NEED_HELO = Reply.of(503, "5.5.1", "Error: send HELO/EHLO first")
NEED_MAIL = Reply.of(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply.of(503, "5.5.1", "Error: need RCPT command")
NESTED_MAIL = Reply.of(503, "5.5.1", "Error: nested MAIL command")
BAD_SEQUENCE = Reply.of(503, "5.5.1", "Error: bad sequence of commands")
EXPN_DISABLED = Reply.of(502, "5.5.1", "Error: command not implemented")
NOT_IMPLEMENTED = Reply.of(502, "5.5.1", "Error: command not implemented")
DATA_AFTER_BDAT = Reply.of(503, "5.5.1", "Error: DATA and BDAT cannot be mixed in one transaction")
STARTTLS_IN_TRANSACTION = Reply.of(503, "5.5.1", "Error: STARTTLS only outside a mail transaction")
TLS_ALREADY_ACTIVE = Reply.of(554, "5.5.1", "Error: TLS already active")
READY_FOR_TLS = Reply.of(220, "2.0.0", "Ready to start TLS")
TLS_REQUIRED = Reply.of(530, "5.7.0", "Must issue a STARTTLS command first")
CHUNK_OK = Reply.of(250, "2.0.0", "Ok: chunk received")

# AUTH (RFC 4954 4 and 6, its enhanced codes from RFC 5248).
AUTH_OK = Reply.of(235, "2.7.0", "Authentication successful")
AUTH_NOT_ENABLED = Reply.of(503, "5.5.1", "Error: authentication not enabled")
AUTH_NEEDS_TLS = Reply.of(538, "5.7.11", "Encryption required for requested authentication mechanism")
ALREADY_AUTHENTICATED = Reply.of(503, "5.5.1", "Error: already authenticated")
AUTH_IN_TRANSACTION = Reply.of(503, "5.5.1", "Error: MAIL transaction in progress")
NEED_EHLO = Reply.of(503, "5.5.1", "Error: send EHLO first")
UNKNOWN_MECHANISM = Reply.of(504, "5.5.4", "Unrecognized authentication type")
CANNOT_DECODE = Reply.of(501, "5.5.2", "Cannot decode response")
AUTH_CANCELLED = Reply.of(501, "5.0.0", "Authentication cancelled")
AUTH_FAILED = Reply.of(535, "5.7.8", "Authentication credentials invalid")
AUTH_REFUSED = Reply.of(535, "5.7.1", "Authentication refused by policy")  # a rule's deny() without a reply
AUTH_TEMPORARY = Reply.of(454, "4.7.0", "Temporary authentication failure")
AUTH_REQUIRED = Reply.of(530, "5.7.0", "Authentication required")
TOO_MANY_AUTH_FAILURES = Reply.of(421, "4.7.0", "Error: too many failed authentications")


def challenge(data: bytes) -> Reply:
    """334 with `data` in base64 (RFC 4954 4): no enhanced code, the text is all data."""
    return Reply.of(334, None, base64.b64encode(data).decode("ascii"))


def syntax(usage: str) -> Reply:
    return Reply.of(501, "5.5.4", f"Syntax: {usage}")


def bad_sender(reason: str) -> Reply:
    return Reply.of(501, "5.1.7", f"Bad sender address syntax: {reason}")


def bad_recipient(reason: str) -> Reply:
    return Reply.of(501, "5.1.3", f"Bad recipient address syntax: {reason}")


def unknown_parameter(name: str) -> Reply:
    return Reply.of(555, "5.5.4", f"Unsupported option: {name}")


def bad_parameter(reason: str) -> Reply:
    return Reply.of(501, "5.5.4", f"Bad parameter: {reason}")


# Policy decisions taken by the session.
RELAY_DENIED = Reply.of(554, "5.7.1", "Relay access denied")
NO_SUCH_USER = Reply.of(550, "5.1.1", "Recipient address rejected: User unknown in local recipient table")
NO_VALID_RECIPIENTS = Reply.of(554, "5.5.1", "Error: no valid recipients")
MESSAGE_TOO_BIG = Reply.of(552, "5.3.4", "Error: message file too big")
SIZE_EXCEEDS_LIMIT = Reply.of(552, "5.3.4", "Message size exceeds fixed limit")
BARE_LINE_ENDING_IN_DATA = Reply.of(550, "5.6.0", "Error: bare CR or LF in message; lines end with CRLF")
TOO_MANY_RECIPIENTS = Reply.of(452, "4.5.3", "Error: too many recipients")
TOO_MANY_ERRORS = Reply.of(421, "4.7.0", "Error: too many errors")
TOO_MANY_CONNECTIONS = Reply.of(421, "4.7.0", "Error: too many connections, try again later")
TOO_MANY_CONNECTIONS_FROM_YOU = Reply.of(421, "4.7.0", "Error: too many connections from your address")
TOO_MANY_CONNECTIONS_FROM_YOUR_NETWORK = Reply.of(421, "4.7.0", "Error: too many connections from your network")
CONNECTION_RATE = Reply.of(421, "4.7.0", "Error: too many connections from your address lately, try again later")
MESSAGE_RATE = Reply.of(450, "4.7.1", "Error: too many messages from your address lately, try again later")
RECIPIENT_RATE = Reply.of(450, "4.7.1", "Error: too many recipients from your address lately, try again later")
AUTH_LOCKED_OUT = Reply.of(454, "4.7.0", "Too many failed authentications, try again later")
SESSION_TOO_LONG = Reply.of(421, "4.4.2", "Error: session lasted too long")


def line_too_long(limit: int) -> Reply:
    return Reply.of(550, "5.6.0", f"Error: message has a line longer than {limit} octets (RFC 5321 4.5.3.1.6)")


# Transient trouble on our side: the client keeps the message and tries later.
STORAGE_FULL = Reply.of(452, "4.3.1", "Insufficient system storage")
LOCAL_ERROR = Reply.of(451, "4.3.0", "Error: queue file write error")
NO_RECIPIENTS_LEFT = Reply.of(554, "5.7.1", "No recipients left after the rules")
HOOK_FAILED = Reply.of(451, "4.3.0", "Temporary local problem, try again later")  # a rule or plugin raised
HOOK_FAILED_AT_CONNECT = Reply.of(421, "4.3.0", "Temporary local problem, closing transmission channel")
SHUTTING_DOWN = Reply.of(421, "4.3.2", "Service shutting down, closing transmission channel")
TIMEOUT = Reply.of(421, "4.4.2", "Error: timeout exceeded")
