"""DMARC aggregate reports (RFC 7489 7.2 and appendix C), as a fold over the auth.dmarc
events the journal already keeps: one report per policy domain, its rows the messages
grouped by what was found about them, gzipped under the standard file name.

Pure: the events come in, XML and a file name go out. Which reports may be mailed where
(the rua addresses, the external-destination check of RFC 7489 7.1, their size limits) is
decided by `destinations` over TXT records the caller looked up.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..queue import events as qe
from .dmarc import organizational_domain

# RFC 7489 appendix C's reason types, for a disposition other than the policy's.
_REASONS = (
    ("trusted sealer", "trusted_forwarder"),
    ("sampled out", "sampled_out"),
    ("decided by", "local_policy"),
    ("mode tag", "local_policy"),
)


@dataclass(frozen=True, slots=True)
class _Row:
    source_ip: str
    disposition: str
    dkim_aligned: str  # pass or fail
    spf_aligned: str
    reason_type: str
    reason: str
    header_from: str
    envelope_from: str
    envelope_to: str
    dkim: tuple[tuple[str, str, str], ...]  # (domain, selector, result)
    spf: tuple[str, str, str]  # (domain, scope, result)


@dataclass(slots=True)
class Report:
    """One policy domain's report for one period."""

    domain: str
    begin: int
    end: int
    published: Mapping[str, str] = field(default_factory=dict)  # the policy record's tags (the latest seen)
    rows: Counter[_Row] = field(default_factory=Counter)

    @property
    def messages(self) -> int:
        return sum(self.rows.values())

    def rua(self) -> list[str]:
        return [u.strip() for u in self.published.get("rua", "").split(",") if u.strip()]


def collect(events: Iterable[qe.DmarcEvaluated], *, begin: float, end: float, domain: str = "") -> dict[str, Report]:
    """The reports for every policy domain (or only `domain`) of the evaluations in [begin, end)."""
    reports: dict[str, Report] = {}
    for event in events:
        if not begin <= event.at < end:
            continue
        result = event.result
        policy_domain = str(result.get("policy_domain", ""))
        if not policy_domain or (domain and policy_domain != domain.lower()):
            continue  # no record was found: nobody to report to
        report = reports.setdefault(policy_domain, Report(domain=policy_domain, begin=int(begin), end=int(end)))
        report.published = dict(result.get("record", {}))
        report.rows[_row(event)] += 1
    return reports


def _row(event: qe.DmarcEvaluated) -> _Row:
    result = event.result
    reason = str(result.get("reason", ""))
    reason_type = next((kind for text, kind in _REASONS if text in reason), "other" if reason else "")
    spf = event.spf
    scope = "helo" if spf.get("identity") == "helo" else "mfrom"
    return _Row(
        source_ip=event.source_ip,
        disposition=str(result.get("disposition", "none")),
        dkim_aligned="pass" if result.get("dkim_aligned") else "fail",
        spf_aligned="pass" if result.get("spf_aligned") else "fail",
        reason_type=reason_type,
        reason=reason,
        header_from=str(result.get("header_from", "")),
        envelope_from=event.envelope_from,
        envelope_to=event.envelope_to,
        dkim=tuple((str(s.get("domain", "")), str(s.get("selector", "")), str(s.get("result", "none"))) for s in event.dkim),
        spf=(str(spf.get("domain") or event.envelope_from), scope, str(spf.get("result", "none"))),
    )


def report_id(report: Report, receiver: str) -> str:
    return hashlib.sha256(f"{receiver}!{report.domain}!{report.begin}!{report.end}".encode()).hexdigest()[:24]


def to_xml(report: Report, *, org_name: str, email: str, receiver: str) -> bytes:
    """The report as RFC 7489 appendix C XML."""
    feedback = ET.Element("feedback")
    ET.SubElement(feedback, "version").text = "1.0"
    meta = ET.SubElement(feedback, "report_metadata")
    ET.SubElement(meta, "org_name").text = org_name
    ET.SubElement(meta, "email").text = email
    ET.SubElement(meta, "report_id").text = report_id(report, receiver)
    dates = ET.SubElement(meta, "date_range")
    ET.SubElement(dates, "begin").text = str(report.begin)
    ET.SubElement(dates, "end").text = str(report.end)
    published = ET.SubElement(feedback, "policy_published")
    ET.SubElement(published, "domain").text = report.domain
    tags = report.published
    ET.SubElement(published, "adkim").text = tags.get("adkim", "r")
    ET.SubElement(published, "aspf").text = tags.get("aspf", "r")
    ET.SubElement(published, "p").text = tags.get("p", "none")
    ET.SubElement(published, "sp").text = tags.get("sp", tags.get("p", "none"))
    ET.SubElement(published, "pct").text = tags.get("pct", "100")
    ET.SubElement(published, "fo").text = tags.get("fo", "0")
    for row, count in sorted(report.rows.items(), key=lambda item: (item[0].source_ip, item[0].header_from, -item[1])):
        record = ET.SubElement(feedback, "record")
        element = ET.SubElement(record, "row")
        ET.SubElement(element, "source_ip").text = row.source_ip
        ET.SubElement(element, "count").text = str(count)
        evaluated = ET.SubElement(element, "policy_evaluated")
        ET.SubElement(evaluated, "disposition").text = row.disposition
        ET.SubElement(evaluated, "dkim").text = row.dkim_aligned
        ET.SubElement(evaluated, "spf").text = row.spf_aligned
        if row.reason_type:
            reason = ET.SubElement(evaluated, "reason")
            ET.SubElement(reason, "type").text = row.reason_type
            ET.SubElement(reason, "comment").text = row.reason
        identifiers = ET.SubElement(record, "identifiers")
        if row.envelope_to:
            ET.SubElement(identifiers, "envelope_to").text = row.envelope_to
        if row.envelope_from:
            ET.SubElement(identifiers, "envelope_from").text = row.envelope_from
        ET.SubElement(identifiers, "header_from").text = row.header_from
        results = ET.SubElement(record, "auth_results")
        for domain, selector, result in row.dkim:
            dkim = ET.SubElement(results, "dkim")
            ET.SubElement(dkim, "domain").text = domain
            ET.SubElement(dkim, "selector").text = selector
            ET.SubElement(dkim, "result").text = result
        spf = ET.SubElement(results, "spf")
        ET.SubElement(spf, "domain").text = row.spf[0]
        ET.SubElement(spf, "scope").text = row.spf[1]
        ET.SubElement(spf, "result").text = row.spf[2]
    ET.indent(feedback)
    body: bytes = ET.tostring(feedback, encoding="utf-8")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body + b"\n"


def file_name(report: Report, *, receiver: str) -> str:
    """RFC 7489 7.2.1.1: receiver!policy-domain!begin!end[!unique-id].xml.gz"""
    return f"{receiver}!{report.domain}!{report.begin}!{report.end}!{report_id(report, receiver)}.xml.gz"


def gzipped(xml: bytes) -> bytes:
    compressed: bytes = gzip.compress(xml, mtime=0)
    return compressed


# -- where a report may go ----------------------------------------------------------------

_SIZE = re.compile(r"^(\d+)([kmgt]?)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True, slots=True)
class Destination:
    address: str
    limit: int  # octets the receiver takes (the URI's !size); 0: no limit said
    external: bool  # outside the policy domain's organization: needs its consent (RFC 7489 7.1)


def destinations(report: Report) -> list[Destination]:
    """The mailto: rua addresses of the report's policy record (others are not ours to use)."""
    found = []
    for uri in report.rua():
        scheme, _, rest = uri.partition(":")
        if scheme.lower() != "mailto" or "@" not in rest:
            continue
        address, _, size = rest.partition("!")
        match = _SIZE.match(size) if size else None
        limit = int(match.group(1)) * _UNITS[match.group(2).lower()] if match else 0
        domain = address.rpartition("@")[2].lower()
        external = organizational_domain(domain) != organizational_domain(report.domain)
        found.append(Destination(address=address, limit=limit, external=external))
    return found


def consent_name(report: Report, destination: Destination) -> str:
    """Where the destination's domain says it accepts reports for the policy domain (7.1)."""
    return f"{report.domain}._report._dmarc.{destination.address.rpartition('@')[2].lower()}"


def consents(records: Sequence[bytes]) -> bool:
    return any(r.strip().lower().startswith(b"v=dmarc1") for r in records)


def report_message(
    report: Report, *, attachment: bytes, name: str, sender: str, to: str, receiver: str, boundary: str, now: float
) -> bytes:
    """The report as a message (RFC 7489 7.2.1.1): a short text and the gzipped XML."""
    date = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    rid = report_id(report, receiver)
    text = (
        f"This is a DMARC aggregate report for {report.domain} from {receiver}:\r\n"
        f"{report.messages} messages between {report.begin} and {report.end}.\r\n"
    )
    encoded = "\r\n".join(_b64_lines(attachment))
    return (
        f"From: {sender}\r\nTo: {to}\r\nDate: {date}\r\n"
        f"Subject: Report Domain: {report.domain} Submitter: {receiver} Report-ID: <{rid}>\r\n"
        f"Message-ID: <{rid}.{int(now)}@{receiver}>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        f"--{boundary}\r\nContent-Type: application/gzip\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n\r\n{encoded}\r\n--{boundary}--\r\n'
    ).encode()


def _b64_lines(data: bytes) -> list[str]:
    text = base64.b64encode(data).decode()
    return [text[i : i + 76] for i in range(0, len(text), 76)]
