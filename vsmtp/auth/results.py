"""The results of sender authentication, as rules see them (ctx.spf, ctx.dkim, ctx.dmarc,
ctx.arc), as the journal keeps them (plain payloads, so that `vsmtp rules test` and the
post-queue stage read them back without a lookup), and as the message carries them: one
Authentication-Results header (RFC 8601) and a Received-SPF header (RFC 7208 9.1).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

SpfStatus = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
DkimStatus = Literal["pass", "fail", "neutral", "policy", "none", "temperror", "permerror"]
DmarcStatus = Literal["pass", "fail", "none", "temperror", "permerror"]
ArcStatus = Literal["pass", "fail", "none"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpfResult:
    result: SpfStatus
    identity: Literal["mailfrom", "helo"]  # which identity was checked (RFC 7208 2.3, 2.4)
    domain: str  # the domain whose record decided
    sender: str  # the MAIL FROM address, or postmaster@HELO for the HELO identity
    helo: str
    client: str  # the client's IP address
    explanation: str = ""

    @property
    def passed(self) -> bool:
        return self.result == "pass"


@dataclass(frozen=True, slots=True, kw_only=True)
class DkimSignature:
    """One DKIM-Signature's outcome."""

    result: DkimStatus
    domain: str  # d=
    selector: str  # s=
    algorithm: str = ""  # a=
    identity: str = ""  # i=
    reason: str = ""  # why it did not pass (or a note when it did, e.g. about l=)
    body_length: int | None = None  # l=, when the signature covers only the first octets of the body
    unsigned_bytes: int = 0  # body octets past l=, which the signature does not cover
    b: str = ""  # the first characters of b=, to tell signatures apart (RFC 6008)

    @property
    def passed(self) -> bool:
        return self.result == "pass"


@dataclass(frozen=True, slots=True, kw_only=True)
class DkimResult:
    signatures: tuple[DkimSignature, ...] = ()

    @property
    def result(self) -> DkimStatus:
        """pass if any signature passed, none without signatures, else the first one's result."""
        if not self.signatures:
            return "none"
        if any(s.passed for s in self.signatures):
            return "pass"
        return self.signatures[0].result

    def passing(self) -> list[DkimSignature]:
        return [s for s in self.signatures if s.passed]

    def domains(self) -> list[str]:
        """The d= of every passing signature."""
        return [s.domain for s in self.passing()]


@dataclass(frozen=True, slots=True, kw_only=True)
class ArcResult:
    result: ArcStatus  # the chain validation status, cv=
    reason: str = ""
    sealers: tuple[str, ...] = ()  # the d= of each ARC-Seal, instance 1 first

    @property
    def passed(self) -> bool:
        return self.result == "pass"


@dataclass(frozen=True, slots=True, kw_only=True)
class DmarcResult:
    result: DmarcStatus
    header_from: str  # the RFC5322.From domain ("" when the message has none, or several)
    policy_domain: str = ""  # where the policy record was found
    policy: str = "none"  # what the record asks for this message: none, quarantine, reject (p, sp or np)
    disposition: str = "none"  # what vsmtp does: policy after pct, overrides and the mode
    spf_aligned: bool = False
    dkim_aligned: bool = False
    record: Mapping[str, str] = dataclasses.field(default_factory=dict)  # the policy record's tags
    reason: str = ""  # e.g. "sampled out (pct=50)", "ARC chain from trusted sealer example.net"

    @property
    def passed(self) -> bool:
        return self.result == "pass"


# -- to and from the journal (plain data) --------------------------------------------------


def to_payload(result: SpfResult | DkimResult | DmarcResult | ArcResult) -> dict[str, Any]:
    """The result as CBOR-friendly data (tuples as lists, mappings as dicts)."""
    if isinstance(result, DkimResult):
        return {"signatures": [dataclasses.asdict(s) for s in result.signatures]}
    data = dataclasses.asdict(result)
    return {k: list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def spf_of(payload: Mapping[str, Any]) -> SpfResult:
    return SpfResult(**_known(SpfResult, payload))


def dkim_of(payload: Mapping[str, Any]) -> DkimResult:
    return DkimResult(signatures=tuple(DkimSignature(**_known(DkimSignature, s)) for s in payload.get("signatures", ())))


def dmarc_of(payload: Mapping[str, Any]) -> DmarcResult:
    return DmarcResult(**_known(DmarcResult, payload))


def arc_of(payload: Mapping[str, Any]) -> ArcResult:
    values = _known(ArcResult, payload)
    values["sealers"] = tuple(values.get("sealers", ()))
    return ArcResult(**values)


def _known(cls: type, payload: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in payload.items() if k in names}


# -- the headers ---------------------------------------------------------------------------

_NEEDS_QUOTES = re.compile(r'[\s()<>@,;:\\"/\[\]?=]')


_ADDRESS = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]*@[A-Za-z0-9.-]+$")


def _value(text: str) -> str:
    """A property value: as it is when it is a token or [local-part] "@" domain, quoted
    otherwise (RFC 8601 2.2, pvalue)."""
    if text and text.isascii() and (not _NEEDS_QUOTES.search(text) or _ADDRESS.match(text)):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ") + '"'


def authentication_results(
    authserv_id: str,
    *,
    spf: SpfResult | None = None,
    dkim: DkimResult | None = None,
    dmarc: DmarcResult | None = None,
    arc: ArcResult | None = None,
) -> bytes:
    """The Authentication-Results header field (with its CRLF), one line per method."""
    methods: list[str] = []
    if spf is not None:
        prop = f"smtp.helo={_value(spf.helo)}" if spf.identity == "helo" else f"smtp.mailfrom={_value(spf.sender)}"
        methods.append(f"spf={spf.result} {prop}")
    if dkim is not None:
        for sig in dkim.signatures or ():
            reason = f" reason={_value(sig.reason)}" if sig.reason and not sig.passed else ""
            a = f" header.a={sig.algorithm}" if sig.algorithm else ""
            b = f" header.b={_value(sig.b)}" if sig.b else ""
            methods.append(f"dkim={sig.result}{reason} header.d={_value(sig.domain)} header.s={_value(sig.selector)}{a}{b}")
        if not dkim.signatures:
            methods.append("dkim=none")
    if arc is not None and arc.result != "none":
        methods.append(f"arc={arc.result}" + (f" reason={_value(arc.reason)}" if arc.reason and not arc.passed else ""))
    if dmarc is not None:
        comment = f" (p={dmarc.policy} dis={dmarc.disposition})" if dmarc.policy_domain else ""
        methods.append(f"dmarc={dmarc.result}{comment} header.from={_value(dmarc.header_from or 'unknown')}")
    if not methods:
        return f"Authentication-Results: {authserv_id}; none\r\n".encode()
    return ("Authentication-Results: " + authserv_id + ";\r\n\t" + ";\r\n\t".join(methods) + "\r\n").encode("utf-8")


def received_spf(spf: SpfResult, *, receiver: str) -> bytes:
    """The Received-SPF header field (RFC 7208 9.1), with its CRLF."""
    comment = f"{receiver}: {spf.explanation or spf.result}".replace("(", "[").replace(")", "]")
    pairs = [
        f"client-ip={spf.client}",
        f"envelope-from={_value(spf.sender)}",
        f"helo={_value(spf.helo or 'unknown')}",
        f"receiver={_value(receiver)}",
        f"identity={spf.identity}",
    ]
    return f"Received-SPF: {spf.result} ({comment})\r\n\t{'; '.join(pairs)};\r\n".encode()


def authserv_id(value: bytes) -> str:
    """The authserv-id an Authentication-Results value starts with (lower case, comments
    and a version number left out: RFC 8601 2.2)."""
    text = re.sub(r"\([^)]*\)", " ", value.decode("utf-8", "replace")).split(";", 1)[0].split()
    return text[0].lower() if text else ""


def without_ours(message: bytes, ours: str) -> bytes:
    """`message` without the Authentication-Results fields that claim the authserv-id `ours`."""
    end = message.find(b"\r\n\r\n")
    head, body = (message[: end + 2], message[end + 2 :]) if end >= 0 else (message, b"")
    if b"authentication-results" not in head.lower():
        return message
    fields: list[list[bytes]] = []  # each field: its first line and its continuation lines
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept = []
    for field_lines in fields:
        name, _, value = b" ".join(field_lines).partition(b":")
        if name.strip().lower() == b"authentication-results" and authserv_id(value) == ours.lower():
            continue
        kept += field_lines
    return b"\r\n".join(kept) + body
