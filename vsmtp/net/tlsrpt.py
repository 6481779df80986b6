"""SMTP TLS reports (RFC 8460), as a fold over the delivery.attempted events the journal
keeps: for each destination domain, the TLS sessions of a day counted (successful, failed),
the failures grouped by result type and receiving host, under the policy that was in force
(tlsa when DANE applied, sts when an MTA-STS policy did, else no-policy-found). Hosts DANE
left out before connecting (a bogus TLSA answer, dane-only without records) are failed
sessions with no receiving IP.

Pure: events in, the JSON report (RFC 8460 4.4) out. Connections that tried no TLS (level
none, or lost before STARTTLS) are not sessions and are not counted. Sending the reports to
the domains' rua addresses is not done yet; `vsmtp tlsrpt report` prints or writes them.
"""

from __future__ import annotations

import datetime
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
    sessions: dict[tuple[str, str], Counter[tuple[str, str, str]]] = {}
    for attempt in attempts:
        if not (start <= attempt.at < end) or not attempt.tls_result or not attempt.domain:
            continue
        if domain and attempt.domain != domain:
            continue
        key = (attempt.domain, attempt.policy or "no-policy-found")
        sessions.setdefault(key, Counter())[(attempt.tls_result, attempt.host, attempt.address)] += 1
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for (name, kind), counted in sorted(sessions.items()):
        successes = sum(n for (result, _, _), n in counted.items() if result == "success")
        described: dict[str, Any] = {"policy-type": kind, "policy-domain": name}
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
