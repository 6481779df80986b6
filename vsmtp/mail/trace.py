"""Trace information a receiving MTA writes and reads: the Received header it prepends
(RFC 5321 4.4) and the Message-ID it indexes the message by. Plain values in, bytes out."""

from __future__ import annotations

import email.utils
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(.*?)\r?$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """How a message came in, as the Received header tells it."""

    helo: str  # the name the client gave
    client: str  # its IP address
    hostname: str  # ours
    esmtp: bool  # EHLO rather than HELO
    smtputf8: bool  # MAIL FROM asked for SMTPUTF8
    tls: tuple[str, str, int] | None  # (version, cipher, bits) when encrypted
    authenticated: bool


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    """The RFC 5322 date of a second, made once for all the messages received in it."""
    return email.utils.formatdate(second, localtime=True)


def protocol(arrival: Arrival) -> str:
    """The "with" keyword: RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA) and RFC 6531 (UTF8SMTP...)."""
    name = "UTF8SMTP" if arrival.smtputf8 else "ESMTP" if arrival.esmtp else "SMTP"
    if arrival.tls is not None:
        name += "S"
    if arrival.authenticated:
        name += "A"  # who logged in is not said, as Postfix by default
    return name


def received(arrival: Arrival, *, queue_id: str, recipients: Sequence[str], now: float) -> bytes:
    """The Received header field (with its CRLF) for a message queued as `queue_id`."""
    literal = f"IPv6:{arrival.client}" if ":" in arrival.client else arrival.client
    tls = ""
    if arrival.tls is not None:
        version, cipher, bits = arrival.tls
        tls = f"\r\n\t(using {version} with cipher {cipher} ({bits}/{bits} bits))"
    recipient = f"\r\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    date = _date(int(now))
    return (
        f"Received: from {arrival.helo} ([{literal}]){tls}\r\n"
        f"\tby {arrival.hostname} (vsmtp) with {protocol(arrival)} id {queue_id}{recipient};\r\n"
        f"\t{date}\r\n"
    ).encode()


def message_id(message: bytes) -> str:
    """The Message-ID header's value, as written ("" when the header section has none)."""
    header_end = message.find(b"\r\n\r\n")
    found = _MESSAGE_ID.search(message, 0, header_end + 2 if header_end >= 0 else len(message))
    return found.group(1).decode("utf-8", "replace").strip() if found else ""


def without_ours(message: bytes) -> bytes:
    """The message as the client sent it: without the Received field it starts with."""
    if not message.startswith(b"Received: "):
        return message
    end = message.find(b"\r\n")
    while end >= 0 and message[end + 2 : end + 3] in (b" ", b"\t"):
        end = message.find(b"\r\n", end + 2)
    return message[end + 2 :] if end >= 0 else message
