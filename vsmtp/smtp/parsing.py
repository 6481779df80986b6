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


def mailbox_of(address: str) -> Mailbox:
    """Split an address already validated by parse_path into local part and domain."""
    local, _, domain = address.rpartition("@")
    return Mailbox(local, domain)
