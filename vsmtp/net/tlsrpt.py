"""SMTP TLS reports (RFC 8460), as a fold over the delivery.attempted events the journal
keeps: for each destination domain, the TLS sessions of a day counted (successful, failed),
the failures grouped by result type and receiving host, under the policy that was in force
(tlsa when DANE applied, one per MX host with its TLSA records; sts when an MTA-STS policy
did, else no-policy-found). Hosts DANE
left out before connecting (a bogus TLSA answer, dane-only without records) are failed
sessions with no receiving IP.

Pure: events in, the JSON report (RFC 8460 4.4) out; and the pieces of sending one (RFC
8460 3, 5): the rua of a domain's `_smtp._tls` record, the report's file name, gzipped, and
the message that carries it to a mailto: rua. Connections that tried no TLS (level none, or
lost before STARTTLS) are not sessions and are not counted. reporting.py sends them.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from ..queue import events as qe
from .mtasts import Policy


def day_range(day: str) -> tuple[float, float]:
    """The UTC day "2026-12-02" as [start, end) in seconds since the epoch (RFC 8460 4.1: reports cover UTC days)."""
    start = datetime.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=datetime.UTC)
    return start.timestamp(), (start + datetime.timedelta(days=1)).timestamp()


def reports(
    attempts: Iterable[qe.DeliveryAttempted],
    *,
    start: float,
    end: float,
    organization: str,
    contact: str,
    policies: Mapping[str, Policy] | None = None,
    domain: str = "",
) -> list[dict[str, Any]]:
    """One report per destination domain that had TLS sessions in [start, end)."""
    sessions: dict[tuple[str, str, str], Counter[tuple[str, str, str]]] = {}
    records: dict[tuple[str, str, str], set[str]] = {}
    for attempt in attempts:
        if not (start <= attempt.at < end) or not attempt.tls_result or not attempt.domain:
            continue
        if domain and attempt.domain != domain:
            continue
        kind = attempt.policy or "no-policy-found"
        key = (attempt.domain, kind, attempt.host if kind == "tlsa" else "")  # DANE: a policy per MX host, its TLSA records
        sessions.setdefault(key, Counter())[(attempt.tls_result, attempt.host, attempt.address)] += 1
        records.setdefault(key, set()).update(attempt.tlsa)
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for (name, kind, host), counted in sorted(sessions.items()):
        successes = sum(n for (result, _, _), n in counted.items() if result == "success")
        described: dict[str, Any] = {"policy-type": kind, "policy-domain": name}
        if kind == "tlsa":
            described |= {"policy-string": sorted(records[(name, kind, host)]), "mx-host": [host]}
        known = (policies or {}).get(name)
        if kind == "sts" and known is not None:
            described["policy-string"] = [
                "version: STSv1",
                f"mode: {known.mode}",
                *(f"mx: {m}" for m in known.mx),
                f"max_age: {known.max_age}",
            ]
            described["mx-host"] = list(known.mx)
        by_domain.setdefault(name, []).append(
            {
                "policy": described,
                "summary": {"total-successful-session-count": successes, "total-failure-session-count": counted.total() - successes},
                "failure-details": [
                    {"result-type": result, "receiving-mx-hostname": host}
                    | ({"receiving-ip": address} if address else {})
                    | {"failed-session-count": n}
                    for (result, host, address), n in sorted(counted.items())
                    if result != "success"
                ],
            }
        )
    begin, finish = (datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in (start, end))
    return [
        {
            "organization-name": organization,
            "date-range": {"start-datetime": begin, "end-datetime": finish},
            "contact-info": contact,
            "report-id": f"{begin[:10]}.{name}@{organization}",
            "policies": entries,
        }
        for name, entries in by_domain.items()
    ]


def rua(records: list[bytes]) -> list[str]:
    """The mailto: and https: URIs of a domain's `_smtp._tls` TXT records (RFC 8460 3):
    none unless exactly one record is a TLSRPTv1 one."""
    found = [r.decode("utf-8", "replace") for r in records if r.startswith(b"v=TLSRPTv1")]
    if len(found) != 1:
        return []
    fields = dict(f.strip().partition("=")[::2] for f in found[0].split(";") if "=" in f)
    uris = [u.strip() for u in fields.get("rua", "").split(",")]
    return [u for u in uris if u.startswith(("mailto:", "https://"))]


def gzipped(report: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(report, ensure_ascii=False).encode(), mtime=0)


def file_name(report: dict[str, Any], submitter: str, start: float, end: float) -> str:
    """RFC 8460 5.1: submitter!policy-domain!begin!end.json.gz (seconds since the epoch)."""
    domain = report["policies"][0]["policy"]["policy-domain"]
    return f"{submitter}!{domain}!{int(start)}!{int(end)}.json.gz"


def message(report: dict[str, Any], *, attachment: bytes, name: str, sender: str, to: str, boundary: str, now: float) -> bytes:
    """The report as mail (RFC 8460 5.3): multipart/report of report-type tlsrpt, a short text
    and the gzipped JSON as application/tlsrpt+gzip."""
    domain = report["policies"][0]["policy"]["policy-domain"]
    submitter = report["organization-name"]
    date = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    period = report["date-range"]
    text = f"An SMTP TLS report (RFC 8460) for {domain} from {submitter}: {period['start-datetime']} to {period['end-datetime']}.\r\n"
    encoded = base64.b64encode(attachment).decode()
    lines = "\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    return (
        f"From: {sender}\r\nTo: {to}\r\nDate: {date}\r\n"
        f"Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{report['report-id']}>\r\n"
        f"TLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {submitter}\r\n"
        f"Message-ID: <{report['report-id']}.{int(now)}@{submitter}>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type="tlsrpt"; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        f"--{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n\r\n{lines}\r\n--{boundary}--\r\n'
    ).encode()
