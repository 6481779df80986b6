"""`vsmtp dmarc report` and `vsmtp tlsrpt report`: DMARC aggregate reports and SMTP TLS
reports (RFC 8460) from the journal, written out and, with --send, sent where the domains
ask: queued as mail to their mailto: addresses, or (TLS reports) posted to their https: URIs.

Nothing is sent where nobody asked: only a record's own mailto: rua addresses; an address
outside the policy domain's organization only when its domain consents
(POLICY._report._dmarc.DESTINATION, RFC 7489 7.1); no report larger than the address's
size limit (the URI's !size); at most `dmarc.report_limit` reports to one address in one
run. TLS reports go only to the rua of the destination domain's own `_smtp._tls` record, at
most `tlsrpt.report_limit` to one URI in a run, posted over verified HTTPS (the system's CAs,
or `delivery.tls_ca`). A queued report is a message like any other (message.accepted, from
`dmarc.report_from`): the running server delivers it. The journal is only read, except for
those messages.
"""

from __future__ import annotations

import secrets
import ssl
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
from .delivery.signing import Signing
from .mail import trace
from .net import dns, https, mtasts, tlsrpt
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
        signing = _signing(config) if send else None
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
                    _queue(journal, sender, destination.address, body, signing)
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


def _queue(journal: Journal, sender: str, recipient: str, body: bytes, signing: Signing | None = None) -> None:
    """The report queued as a message of vsmtp's own, DKIM-signed first when keys for its From
    domain are configured (`[[dkim.sign]]`; RFC 8460 5.3 asks it of TLS reports)."""
    queue_id = ids.new_id()
    now = time.time()
    signed: list[qe.JournalEvent] = []
    if signing is not None:
        body, signed = signing.apply(body, trusted=True, recipients=(recipient,), queue_id=queue_id, now=now)
    accepted = qe.MessageAccepted(
        at=now,
        queue_id=queue_id,
        session_id="",
        reverse_path=sender,
        recipients=(recipient,),
        blob=queue_id.encode(),
        size=len(body),
        message_id=trace.message_id(body),
    )
    journal.append_batch([qe.to_append(accepted, blobs={accepted.blob: body}), *(qe.to_append(e) for e in signed)])


def _signing(config: Config) -> Signing | None:
    return Signing(config) if config.dkim.sign else None


@dataclass(slots=True)
class TlsOutcome:
    report: dict[str, object]
    sent_to: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (URI, why)


def tls_reports(config: Config, *, start: float, end: float, domain: str, send: bool) -> list[TlsOutcome]:
    """The TLS reports of [start, end), one per destination domain; with `send`, each sent to
    its domain's rua."""
    kept = mtasts.Policies.read(Path(config.journal.path) / "mta-sts.json")
    submitter = config.tlsrpt.report_org or config.hostname
    sender = config.tlsrpt.report_from or f"postmaster@{config.hostname}"
    with Journal(config.journal.path, readonly=not send) as journal:
        attempts = [e for e in map(qe.decode, journal.read(0)) if isinstance(e, qe.DeliveryAttempted)]
        found = tlsrpt.reports(attempts, start=start, end=end, organization=submitter, contact=sender, policies=kept, domain=domain)
        outcomes = [TlsOutcome(report) for report in found]
        if send:
            trio.run(_send_tls, config, journal, outcomes, sender, (start, end))
    return outcomes


async def _send_tls(config: Config, journal: Journal, outcomes: list[TlsOutcome], sender: str, period: tuple[float, float]) -> None:
    answers = dns.AnswerCache(dns.resolver(config.dns))
    context = ssl.create_default_context(cafile=config.delivery.tls_ca or None)
    sent: Counter[str] = Counter()
    signing = _signing(config)
    for outcome in outcomes:
        report = outcome.report
        name = report["policies"][0]["policy"]["policy-domain"]  # type: ignore[index]
        try:
            uris = tlsrpt.rua(await answers.txt(f"_smtp._tls.{name}"))
        except (dns.DnsTemporary, dns.DnsPermanent) as exc:
            outcome.skipped.append((f"_smtp._tls.{name}", f"cannot look it up: {exc}"))
            continue
        data = tlsrpt.gzipped(report)
        file = tlsrpt.file_name(report, str(report["organization-name"]), *period)
        for uri in uris:
            if sent[uri] >= config.tlsrpt.report_limit:
                outcome.skipped.append((uri, f"limit of {config.tlsrpt.report_limit} reports per address in one run reached"))
                continue
            if uri.startswith("mailto:"):
                to = uri.removeprefix("mailto:").split("?", 1)[0]
                body = tlsrpt.message(
                    report, attachment=data, name=file, sender=sender, to=to, boundary=secrets.token_hex(12), now=time.time()
                )
                _queue(journal, sender, to, body, signing)
            else:
                why = await _post(uri, data, answers, context)
                if why:
                    outcome.skipped.append((uri, why))
                    continue
            sent[uri] += 1
            outcome.sent_to.append(uri)


async def _post(uri: str, data: bytes, answers: dns.AnswerCache, context: ssl.SSLContext) -> str:
    """POST the gzipped report (RFC 8460 5.4); why it did not take ("" : it did)."""
    rest = uri.removeprefix("https://")
    authority, _, path = rest.partition("/")
    host, _, given = authority.partition(":")
    try:
        status, _ = await https.request(
            host,
            "/" + path,
            dns=answers,
            context=context,
            port=int(given) if given else 443,
            method="POST",
            body=data,
            content_type="application/tlsrpt+gzip",
            limit=4096,
            timeout=60.0,
        )
    except (*mtasts.FETCH_FAILURES, https.HttpsError, dns.DnsTemporary, dns.DnsPermanent, ValueError) as exc:
        return f"cannot post it: {exc}"
    return "" if 200 <= status < 300 else f"the server answered HTTP {status}"
