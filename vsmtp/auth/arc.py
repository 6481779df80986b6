"""ARC (RFC 8617) with dkimpy: the chain of a message verified, and a seal added to what
vsmtp forwards. As for DKIM, the keys are looked up by the caller (auth/dkim.key_names lists
the ARC-Seal and ARC-Message-Signature keys too) and handed in: nothing here asks the DNS."""

from __future__ import annotations

import re

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from .dkim import Keys, KeyState, SigningKey, _headers, _quiet
from .results import ArcResult


def verify(message: bytes, keys: Keys) -> ArcResult:
    """The chain validation status (cv) of `message`'s ARC sets."""
    sealers = _sealers(message)
    if not sealers:
        return ArcResult(result="none")

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        record = keys.get(name.decode("ascii", "replace").rstrip(".").lower(), KeyState.TEMPORARY)
        if record == KeyState.ABSENT:
            return None
        if isinstance(record, str):
            raise dkim.DnsTimeoutError(f"key {name.decode('ascii', 'replace')} could not be looked up")
        return record

    try:
        cv, _results, reason = dkim.ARC(message, logger=_quiet, minkey=1024).verify(dnsfunc=dnsfunc)
    except dkim.DKIMException as exc:
        return ArcResult(result="fail", reason=str(exc), sealers=sealers)
    status = (cv or b"fail").decode()
    return ArcResult(result="pass" if status == "pass" else "none" if status == "none" else "fail", reason=str(reason), sealers=sealers)


def _sealers(message: bytes) -> tuple[str, ...]:
    """The d= of each ARC-Seal, by instance (i=1 first)."""
    found: dict[int, str] = {}
    for name, value in _headers(message):
        if name.lower() != b"arc-seal":
            continue
        try:
            tags = parse_tag_value(value)
            found[int(tags[b"i"])] = tags[b"d"].decode("ascii", "replace").lower()
        except (InvalidTagValueList, KeyError, ValueError):
            continue
    return tuple(found[i] for i in sorted(found))


def seal(message: bytes, key: SigningKey, *, authserv_id: str, now: int) -> bytes:
    """The ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results) to prepend:
    built from our Authentication-Results (authserv-id `authserv_id`), which the message must
    carry. b"" when the chain already failed (RFC 8617 5.1.2: no seal over cv=fail)."""
    if re.search(rb"(?im)^ARC-Seal:.*\bcv=fail\b", message):
        return b""
    fields = dkim.arc_sign(
        message,
        key.selector.encode(),
        key.domain.encode(),
        key.secret,
        authserv_id.encode(),
        signature_algorithm=key.algorithm.encode(),
        timestamp=now,
        logger=_quiet,
    )
    return b"".join(fields)
