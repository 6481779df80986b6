"""DMARC (RFC 7489, with DMARCbis's np tag): the author's domain (RFC5322.From), its
organizational domain (the public suffix list shipped in the publicsuffixlist wheel: no
download at run time), alignment of the SPF and DKIM identities with it (relaxed or
strict), and the policy its record asks for. Pure: the caller looks up the records and
hands them in.

Several From domains (RFC 7489 6.6.1): each is evaluated and the strictest outcome applies.
No From domain: the result is none (nothing to evaluate), said in `reason`.
"""

from __future__ import annotations

import email.utils
import functools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from publicsuffixlist import PublicSuffixList

from .results import ArcResult, DkimResult, DmarcResult, SpfResult

POLICIES = ("none", "quarantine", "reject")
_STRICTNESS = {p: i for i, p in enumerate(POLICIES)}


@functools.lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # parsed once per process (about 0.1 s)


def organizational_domain(domain: str) -> str:
    """The registered domain: example.co.uk for mail.example.co.uk (RFC 7489 3.2)."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def from_domains(message: bytes) -> list[str]:
    """The domains of every RFC5322.From address (lower case, each once, in order)."""
    head = message.split(b"\r\n\r\n", 1)[0]
    values = []
    for line in _unfolded(head):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"from":
            values.append(value.decode("utf-8", "replace"))
    domains: dict[str, None] = {}
    for _, address in email.utils.getaddresses(values):
        if "@" in address:
            domains[address.rpartition("@")[2].strip().lower().rstrip(".")] = None
    return [d for d in domains if d]


def _unfolded(head: bytes) -> list[bytes]:
    lines: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += line
        else:
            lines.append(line)
    return lines


def parse_record(texts: Sequence[bytes]) -> dict[str, str] | None:
    """The DMARC record among a name's TXT records: tag -> value, or None when there is none
    or more than one (RFC 7489 6.6.3). A record whose p= is missing or unknown counts as
    none, unless it has a valid rua (then p=none, 6.6.3)."""
    found = [t for t in texts if t.strip().lower().startswith(b"v=dmarc1")]
    if len(found) != 1:
        return None
    tags: dict[str, str] = {}
    for part in found[0].decode("utf-8", "replace").split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    if tags.get("v") != "DMARC1":
        return None
    if tags.get("p", "").lower() not in POLICIES:
        if not tags.get("rua"):
            return None
        tags["p"] = "none"
    return tags


def aligned(identifier: str, author: str, mode: str) -> bool:
    """Is the authenticated `identifier` (an SPF or DKIM domain) aligned with the author's
    domain? strict ("s"): the same name; relaxed ("r"): the same organizational domain."""
    identifier, author = identifier.lower().rstrip("."), author.lower().rstrip(".")
    if not identifier or not author:
        return False
    if mode == "s":
        return identifier == author
    return organizational_domain(identifier) == organizational_domain(author)


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Where a From domain's record was found, and what it says."""

    domain: str  # the name the record was found at (_dmarc. removed)
    record: Mapping[str, str]
    author_exists: bool = True  # false: the From domain does not exist (DMARCbis np applies)


def evaluate(
    author: str,
    policy: Policy | None,
    *,
    spf: SpfResult | None,
    dkim: DkimResult | None,
    sample: float | None = None,
) -> DmarcResult:
    """The DMARC result for one From domain. `sample` in [0, 1) decides pct (random when None)."""
    if policy is None:
        return DmarcResult(result="none", header_from=author, reason="no DMARC record")
    record = policy.record
    spf_ok = spf is not None and spf.passed and aligned(spf.domain, author, record.get("aspf", "r").lower())
    dkim_ok = dkim is not None and any(aligned(d, author, record.get("adkim", "r").lower()) for d in dkim.domains())
    asked = _asked(author, policy)
    passed = spf_ok or dkim_ok
    result = DmarcResult(
        result="pass" if passed else "fail",
        header_from=author,
        policy_domain=policy.domain,
        policy=asked,
        disposition="none" if passed else asked,
        spf_aligned=spf_ok,
        dkim_aligned=dkim_ok,
        record=dict(record),
    )
    if passed or asked == "none":
        return result
    pct = _pct(record.get("pct", "100"))
    if pct < 100 and (random.random() if sample is None else sample) * 100 >= pct:
        # RFC 7489 6.6.4: the messages sampled out get the next policy down.
        lighter = "quarantine" if asked == "reject" else "none"
        return replace(result, disposition=lighter, reason=f"sampled out (pct={pct})")
    return result


def _asked(author: str, policy: Policy) -> str:
    """p for the domain that published it; sp for its subdomains; np (DMARCbis) for
    subdomains that do not exist."""
    record = policy.record
    asked = record.get("p", "none").lower()
    if author != policy.domain:
        asked = record.get("sp", asked).lower()
        if not policy.author_exists:
            asked = record.get("np", asked).lower()
    return asked if asked in POLICIES else "none"


def _pct(text: str) -> int:
    return min(100, max(0, int(text))) if text.strip().isdigit() else 100


def strictest(results: Sequence[DmarcResult]) -> DmarcResult:
    """For several From domains: the result whose disposition is strictest (a fail first)."""
    return max(results, key=lambda r: (_STRICTNESS.get(r.disposition, 0), r.result == "fail"))


def arc_override(result: DmarcResult, arc: ArcResult | None, trusted: Sequence[str]) -> DmarcResult:
    """RFC 8617 7.2: a DMARC fail on a message whose ARC chain passes and was sealed by a
    trusted forwarder is let through (the report says so: local_policy)."""
    if result.passed or arc is None or not arc.passed or not trusted:
        return result
    sealers = [s for s in arc.sealers if s in {t.lower() for t in trusted}]
    if not sealers:
        return result
    return replace(result, disposition="none", reason=f"ARC chain from trusted sealer {sealers[-1]}")


def reporting_address_domain(uri: str) -> str:
    """The domain of a mailto: report URI ("" for other schemes)."""
    scheme, _, rest = uri.strip().partition(":")
    if scheme.lower() != "mailto":
        return ""
    address = rest.split("!", 1)[0]
    return address.rpartition("@")[2].lower()
