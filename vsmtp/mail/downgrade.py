"""8-bit to 7-bit conversion, for a next hop that does not offer 8BITMIME (RFC 6152 3:
"convert the message to 7 bit", as Postfix does): every MIME part whose body has 8-bit
octets is re-encoded, text as quoted-printable and anything else as base64, its
Content-Transfer-Encoding changed to say so. Multipart bodies and message/rfc822 parts are
walked; everything else stays byte for byte. A message with 8-bit octets in a header cannot
be converted (that needs RFC 2047, or SMTPUTF8): `seven_bit` returns None.

Pure: bytes in, bytes out. Converting breaks a DKIM signature over the body, as it does
for every MTA that converts; mail signed for a host without 8BITMIME is better sent 7-bit.
"""

from __future__ import annotations

import base64
import binascii
import re

MAX_DEPTH = 20  # nested multiparts walked; deeper is left as it is (and so cannot go)
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*?)(?=\r\n(?![ \t])|\Z)", re.MULTILINE | re.DOTALL)


def seven_bit(message: bytes) -> bytes | None:
    """`message` with no octet above 127, or None when that cannot be done."""
    converted = _entity(message, depth=0)
    return converted if converted is not None and converted.isascii() else None


def _entity(entity: bytes, *, depth: int) -> bytes | None:
    if entity.isascii():
        return entity
    end = entity.find(b"\r\n\r\n")
    head, body = (entity[: end + 2], entity[end + 4 :]) if end >= 0 else (entity, b"")
    if not head.isascii() or depth > MAX_DEPTH:
        return None
    fields = {m.group(1).lower(): m.group(2) for m in _FIELD.finditer(head)}
    kind, params = _content_type(fields.get(b"content-type", b"text/plain"))
    if kind.startswith(b"multipart/"):
        boundary = params.get(b"boundary")
        converted = _multipart(body, boundary, depth=depth) if boundary else None
        return None if converted is None else head + b"\r\n" + converted
    if kind == b"message/rfc822":
        inner = _entity(body, depth=depth + 1)
        return None if inner is None else _with_encoding(head, b"7bit") + b"\r\n" + inner
    if kind.startswith(b"text/"):
        encoded = binascii.b2a_qp(body, quotetabs=False, istext=True, header=False)
        return _with_encoding(head, b"quoted-printable") + b"\r\n" + encoded
    lines = base64.encodebytes(body).replace(b"\n", b"\r\n")
    return _with_encoding(head, b"base64") + b"\r\n" + lines


def _multipart(body: bytes, boundary: bytes, *, depth: int) -> bytes | None:
    """Each part between the delimiter lines converted; the delimiters, preamble and epilogue kept."""
    delimiter = re.compile(rb"(?m)^--" + re.escape(boundary) + rb"(--)?[ \t]*\r$")
    found = list(delimiter.finditer(body))
    if not found:
        return None
    out = [body[: found[0].start()]]
    for this, after in zip(found, [*found[1:], None], strict=True):
        out.append(this.group(0) + b"\n")
        if this.group(1) or after is None:  # the close delimiter: the epilogue follows, as it is
            out.append(body[this.end() + 1 :])
            break
        part = body[this.end() + 1 : max(after.start() - 2, this.end() + 1)]  # the CRLF before a delimiter is the delimiter's
        converted = _entity(part, depth=depth + 1)
        if converted is None:
            return None
        out.append(converted + body[after.start() - 2 : after.start()])
    return b"".join(out)


def _content_type(value: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    kind, *rest = value.replace(b"\r\n", b" ").split(b";")
    params = {}
    for param in rest:
        name, _, raw = param.strip().partition(b"=")
        params[name.strip().lower()] = raw.strip().strip(b'"')
    return kind.strip().lower(), params


def _with_encoding(head: bytes, encoding: bytes) -> bytes:
    """The header block with its Content-Transfer-Encoding field(s) replaced by one saying `encoding`."""
    kept = re.sub(rb"(?im)^content-transfer-encoding[ \t]*:.*\r\n(?:[ \t].*\r\n)*", b"", head)
    return kept + b"Content-Transfer-Encoding: " + encoding + b"\r\n"
