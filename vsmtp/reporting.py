"""`vsmtp dmarc report`: DMARC aggregate reports from the journal, written as files and,
with --send, queued as mail to the addresses the domains publish.

Nothing is sent where nobody asked: only a record's own mailto: rua addresses; an address
outside the policy domain's organization only when its domain consents
(POLICY._report._dmarc.DESTINATION, RFC 7489 7.1); no report larger than the address's
size limit (the URI's !size); at most `dmarc.report_limit` reports to one address in one
run. A queued report is a message like any other (message.accepted, from
`dmarc.report_from`): the running server delivers it. The journal is only read, except for
those messages.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio
from vsmtp_journal import Journal

from . import ids
from .auth import report
from .config import Config
from .mail import trace
from .net import dns
from .queue import events as qe


@dataclass(slots=True)
class Outcome:
    domain: str
    path: Path
    messages: int
    sent_to: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (address, why)


def evaluations(journal: Journal) -> Iterator[qe.DmarcEvaluated]:
    for record in journal.read(0):
        if record.tag == qe.DmarcEvaluated.TAG:
            event = qe.decode(record)
            if isinstance(event, qe.DmarcEvaluated):
                yield event


def run(config: Config, *, since: float, until: float, domain: str, output: Path, send: bool) -> list[Outcome]:
    receiver = config.hostname
    org_name = config.dmarc.report_org or receiver
    sender = config.dmarc.report_from or f"postmaster@{receiver}"
    output.mkdir(parents=True, exist_ok=True)
    outcomes = []
    with Journal(config.journal.path, readonly=not send) as journal:
        reports = report.collect(evaluations(journal), begin=since, end=until, domain=domain)
        sent: Counter[str] = Counter()
        for found in reports.values():
            xml = report.to_xml(found, org_name=org_name, email=sender, receiver=receiver)
            name = report.file_name(found, receiver=receiver)
            data = report.gzipped(xml)
            path = output / name
            path.write_bytes(data)
            outcome = Outcome(domain=found.domain, path=path, messages=found.messages)
            outcomes.append(outcome)
            if send:
                for destination in report.destinations(found):
                    why = _refusal(config, found, destination, data, sent)
                    if why:
                        outcome.skipped.append((destination.address, why))
                        continue
                    body = report.report_message(
                        found,
                        attachment=data,
                        name=name,
                        sender=sender,
                        to=destination.address,
                        receiver=receiver,
                        boundary=secrets.token_hex(12),
                        now=time.time(),
                    )
                    _queue(journal, sender, destination.address, body)
                    sent[destination.address] += 1
                    outcome.sent_to.append(destination.address)
    return outcomes


def _refusal(config: Config, found: report.Report, destination: report.Destination, data: bytes, sent: Counter[str]) -> str:
    """Why the report must not go to `destination` ("" : it may)."""
    if sent[destination.address] >= config.dmarc.report_limit:
        return f"limit of {config.dmarc.report_limit} reports per address in one run reached"
    if destination.limit and len(data) > destination.limit:
        return f"the report ({len(data)} octets) is larger than the address takes ({destination.limit})"
    if destination.external:
        name = report.consent_name(found, destination)
        try:
            records = trio.run(dns.AnswerCache(dns.resolver(config.dns)).txt, name)
        except (dns.DnsTemporary, dns.DnsPermanent) as exc:
            return f"cannot look up {name} ({exc}): not sent outside {found.domain}'s organization"
        if not report.consents(records):
            return f"{name} has no v=DMARC1 record: its domain did not agree to receive {found.domain}'s reports"
    return ""


def _queue(journal: Journal, sender: str, recipient: str, body: bytes) -> None:
    queue_id = ids.new_id()
    accepted = qe.MessageAccepted(
        at=time.time(),
        queue_id=queue_id,
        session_id="",
        reverse_path=sender,
        recipients=(recipient,),
        blob=queue_id.encode(),
        size=len(body),
        message_id=trace.message_id(body),
    )
    journal.append_batch([qe.to_append(accepted, blobs={accepted.blob: body})])
