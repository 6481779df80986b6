"""RFC 5321 grammar: paths (4.1.2), ESMTP parameters (4.1.2, 4.1.1.11) and DATA content (4.5.2).

Pure functions over str and bytes. Path parsing returns the mailbox as a string, or raises
PathError with a precise reason that the caller turns into 501 5.1.7 / 5.1.3.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2
MAX_PATH = 256  # RFC 5321 4.5.3.1.3

_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_ATOM_ASCII = re.compile(rf"[{_ATEXT}]+\Z")
_ATOM_UTF8 = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+\Z")
# qtextSMTP (%d32-33 / %d35-91 / %d93-126) or quoted-pairSMTP (backslash, %d32-126).
_QUOTED_ASCII = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
_QUOTED_UTF8 = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"\Z')
_LABEL_ASCII = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")
_LABEL_UTF8 = re.compile(r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?\Z")
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")  # RFC 6531 3.3 allows UTF-8


class PathError(ValueError):
    """A reverse-path or forward-path that does not follow RFC 5321 4.1.2."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    local_part: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain}"


def split_path_and_params(argument: str, prefix: str) -> tuple[str, str]:
    """Split 'FROM:<a@b> SIZE=10' into ('<a@b>', 'SIZE=10'); prefix is 'FROM:' or 'TO:'.

    Like Postfix, a space after the colon is tolerated; RFC 5321 has none.
    """
    if argument[: len(prefix)].upper() != prefix:
        raise PathError(f"expected {prefix}<address>")
    rest = argument[len(prefix) :].lstrip(" ")
    if not rest.startswith("<"):
        raise PathError("address must be enclosed in <>")
    end = _closing_bracket(rest)
    path, params = rest[: end + 1], rest[end + 1 :]
    if params and not params.startswith(" "):
        raise PathError("garbage after the closing >")
    return path, params.strip(" ")


def _closing_bracket(text: str) -> int:
    """Index of the '>' closing the path, skipping quoted strings and escaped characters."""
    quoted = False
    i = 1
    while i < len(text):
        c = text[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
        i += 1
    raise PathError("missing closing >")


def parse_path(path: str, *, utf8: bool, null_ok: bool, postmaster_ok: bool) -> str:
    """Validate '<...>' and return the mailbox ('' for the null path, 'postmaster' alone).

    A source route (<@a,@b:user@c>) is accepted and ignored (RFC 5321 4.1.2, appendix C).
    """
    if len(path) > MAX_PATH + 2:
        raise PathError(f"path longer than {MAX_PATH} characters")
    inner = path[1:-1]
    if inner == "":
        if null_ok:
            return ""
        raise PathError("empty address")
    if inner.startswith("@"):
        route, sep, inner = inner.partition(":")
        if not sep:
            raise PathError("source route without ':'")
        for hop in route.split(","):
            if not hop.startswith("@"):
                raise PathError("malformed source route")
            _check_domain(hop[1:], utf8=utf8)
    if postmaster_ok and inner.lower() == "postmaster":
        return "postmaster"
    return str(parse_mailbox(inner, utf8=utf8))


def parse_mailbox(text: str, *, utf8: bool) -> Mailbox:
    at = text.rfind("@")
    if at <= 0:
        raise PathError("address has no domain" if at < 0 else "address has no local part")
    local, domain = text[:at], text[at + 1 :]
    if not utf8 and not local.isascii():
        raise PathError("non-ASCII local part without SMTPUTF8")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise PathError(f"local part longer than {MAX_LOCAL_PART} octets")
    if local.startswith('"'):
        if not (_QUOTED_UTF8 if utf8 else _QUOTED_ASCII).match(local):
            raise PathError("malformed quoted local part")
        inner = local[1:-1]
        atom = _ATOM_UTF8 if utf8 else _ATOM_ASCII
        if inner and "\\" not in inner and all(atom.match(part) for part in inner.split(".")):
            local = inner  # RFC 5321 4.1.2: "alice"@example.org is alice@example.org; one form is kept
    else:
        atom = _ATOM_UTF8 if utf8 else _ATOM_ASCII
        if not all(atom.match(part) for part in local.split(".")):
            raise PathError("invalid character or dot in local part")
    _check_domain(domain, utf8=utf8)
    return Mailbox(local, domain)


def _check_domain(domain: str, *, utf8: bool) -> None:
    if domain.startswith("["):
        _check_address_literal(domain)
        return
    if not domain:
        raise PathError("empty domain")
    if not utf8 and not domain.isascii():
        raise PathError("non-ASCII domain without SMTPUTF8")
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise PathError(f"domain longer than {MAX_DOMAIN} octets")
    label = _LABEL_UTF8 if utf8 else _LABEL_ASCII
    for part in domain.split("."):
        if not label.match(part) or len(part) > 63:
            raise PathError(f"invalid domain label {part!r}")


def _check_address_literal(literal: str) -> None:
    if not literal.endswith("]"):
        raise PathError("unterminated address literal")
    body = literal[1:-1]
    try:
        if body[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(body[5:])
        else:
            ipaddress.IPv4Address(body)
    except ValueError as exc:
        raise PathError(f"invalid address literal {literal}") from exc


def parse_params(text: str) -> dict[str, str | None]:
    """'SIZE=100 BODY=8BITMIME' -> {'SIZE': '100', 'BODY': '8BITMIME'} (RFC 5321 4.1.2 esmtp-param)."""
    params: dict[str, str | None] = {}
    for item in text.split():
        keyword, sep, value = item.partition("=")
        if not _ESMTP_KEYWORD.match(keyword):
            raise PathError(f"malformed parameter {item!r}")
        if sep and not _ESMTP_VALUE.match(value):
            raise PathError(f"malformed value in {item!r}")
        key = keyword.upper()
        if key in params:
            raise PathError(f"parameter {key} given twice")
        params[key] = value if sep else None
    return params


class ContentScanner:
    """Watches message content, in chunks of any size, for what must not pass:

    - bare CR or LF (RFC 5321 2.3.8), whatever the chunks: a CR is bare unless an LF follows
      it (in the same chunk or at the start of the next), and once no CR is bare, an LF is
      bare exactly when there are more LFs than CRs;
    - lines longer than `max_line` octets including the CRLF (RFC 5321 4.5.3.1.6); 0 is no limit.

    Only C-level byte searches run per chunk; nothing here walks the message line by line.
    """

    __slots__ = ("_bare_cr", "_cr", "_lf", "_pending_cr", "_tail", "long_line", "max_line")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.long_line = False
        self._cr = self._lf = 0
        self._bare_cr = False
        self._pending_cr = False  # the last chunk ended with a CR: the next must start with its LF
        self._tail = 0  # length of the unfinished last line so far

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._pending_cr and chunk[:1] != b"\n":
            self._bare_cr = True
        self._cr += chunk.count(b"\r")
        self._lf += chunk.count(b"\n")
        self._pending_cr = chunk[-1:] == b"\r"
        if not self._bare_cr and _BARE_CR.search(chunk, 0, len(chunk) - self._pending_cr):
            self._bare_cr = True  # (a CR that ends the chunk is left for the next one to settle)
        if self.max_line and not self.long_line:
            self._check_lengths(chunk)

    def _check_lengths(self, chunk: bytes) -> None:
        limit = self.max_line - 1  # octets before the LF, the CR included
        last_lf = chunk.rfind(b"\n")
        if last_lf < 0:
            self._tail += len(chunk)
            self.long_line = self._tail > limit
            return
        if self._tail + len(chunk) > limit:  # only then can a line be too long
            first_lf = chunk.find(b"\n")
            if self._tail + first_lf > limit or _line_over(chunk, first_lf, last_lf, limit):
                self.long_line = True
        self._tail = len(chunk) - last_lf - 1
        self.long_line = self.long_line or self._tail > limit

    @property
    def bare_line_endings(self) -> bool:
        return self._bare_cr or self._pending_cr or self._cr != self._lf


# A CR that no LF follows. A literal first, so the search jumps from CR to CR (50 us for
# 100 KiB of 78-octet lines, where counting the CRLF pairs took 85).
_BARE_CR = re.compile(rb"\r(?!\n)")


def _line_over(chunk: bytes, first_lf: int, last_lf: int, limit: int) -> bool:
    """Whether a line between the LFs at `first_lf` and `last_lf` holds more than `limit`
    octets before its LF. From each LF it jumps to the last LF within the next `limit` + 1
    octets (a C-level search, about one per `limit` octets of content, not one per line):
    where there is none, the line that starts there is too long."""
    at = first_lf
    while last_lf - at > limit + 1:
        at = chunk.rfind(b"\n", at + 1, at + limit + 2)
        if at < 0:
            return True
    return False


_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
MAX_ENVID = 100  # RFC 3461 4.4
_NOTIFY = {"SUCCESS", "FAILURE", "DELAY"}


def check_xtext(value: str, what: str) -> None:
    """RFC 3461 4: printable ASCII, with '+' and '=' written as +2B and +3D."""
    if not _XTEXT.match(value):
        raise PathError(f"{what} is not valid xtext")


def check_notify(value: str) -> None:
    """RFC 3461 4.1: NEVER alone, or a list of SUCCESS, FAILURE, DELAY."""
    items = [v.upper() for v in value.split(",")]
    if items == ["NEVER"]:
        return
    if not items or len(set(items)) != len(items) or not set(items) <= _NOTIFY:
        raise PathError("NOTIFY is NEVER or a list of SUCCESS, FAILURE, DELAY")


def check_orcpt(value: str) -> None:
    """RFC 3461 4.2: addr-type ";" xtext, addr-type rfc822 (or utf-8, RFC 6533)."""
    addr_type, sep, address = value.partition(";")
    if not sep or addr_type.lower() not in ("rfc822", "utf-8") or not address:
        raise PathError("ORCPT is addr-type;address with addr-type rfc822 or utf-8")
    if addr_type.lower() == "rfc822":
        check_xtext(address, "ORCPT")
