"""Bounces and other delivery status notifications (RFC 3464): failures, successes, delays.

A message whose recipients are all final, some failed, stays in the queue state until this
module has queued its bounce: the DSN (a new message from the null sender to the original
sender) and `message.bounced` go into the journal in one transaction, so a crash can
neither lose the bounce nor send it twice.

- multipart/report; report-type=delivery-status: a human-readable part, the
  message/delivery-status part (one block per failed recipient, with Final-Recipient,
  Original-Recipient from ORCPT, Action, Status, Remote-MTA, Diagnostic-Code), and the
  original's headers (text/rfc822-headers), or the whole original (message/rfc822) when the
  sender asked for RET=FULL;
- a notice about a UTF-8 address or message (RFC 6533) uses message/global-delivery-status,
  `utf-8;` addresses, message/global-headers (or message/global) for the original, and is
  itself queued with SMTPUTF8;
- ENVID is returned as Original-Envelope-Id; NOTIFY is honoured (RFC 3461 4.1): a failed
  recipient is reported unless its NOTIFY leaves out FAILURE, a delivered one only if it
  asked for SUCCESS ("delivered" into a mailbox here, "relayed" when handed to another
  host), a delayed one (delivery.delay_warning, off by default) unless it left out DELAY;
  if that leaves nobody, no notice is sent;
- never a notice for a message from the null sender (a bounce cannot bounce).
"""

from __future__ import annotations

import dataclasses
import email.utils
from collections.abc import Callable
from dataclasses import dataclass

from vsmtp_journal import Append, CorruptBlob, Journal

from .. import ids
from ..config import Config
from ..queue import events as qe
from ..queue import history, policy
from ..queue.state import MessageState, RecipientState
from .signing import Signing


def failure_status(recipient: RecipientState) -> str:
    """The RFC 3463 status of a failed recipient: its last attempt's (the server's, or ours)."""
    status = recipient.last_status
    return status if status[:1] in ("4", "5") else "5.0.0"  # 4.4.7 for an expired one


def delay_status(recipient: RecipientState) -> str:
    """The RFC 3463 status of a delay: the last attempt's 4.x.x, else 4.0.0."""
    return recipient.last_status if recipient.last_status.startswith("4") else "4.0.0"


@dataclass(frozen=True, slots=True)
class Report:
    """One recipient's block in a DSN."""

    recipient: str
    action: str  # failed, delayed, delivered (into a mailbox here) or relayed (to a host without DSN)
    status: str  # RFC 3463
    reason: str  # the diagnostic; "" for none
    remote: str = ""  # the host whose reply the reason holds ("" : ours)

    @classmethod
    def of(cls, recipient: RecipientState, action: str, status: str) -> Report:
        """The report of a recipient's last attempt: the server's reply as its diagnostic, if a
        server gave one (the reason without the "host[address]: " our outcomes begin with)."""
        reason, host = recipient.last_error, recipient.last_host
        if recipient.last_code and host and reason.startswith(host):
            return cls(recipient.address, action, status, reason.split(": ", 1)[-1], host)
        return cls(recipient.address, action, status, reason)


_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
}
_SAYS = {
    "failed": "Your message could not be delivered to one or more recipients.",
    "delayed": "Your message could not be delivered yet to one or more recipients. It is still being retried; you need not send it again.",
    "delivered": "Your message was delivered to the recipients below.",
}


def compose(
    *,
    message: MessageState,
    original: bytes,
    accepted: qe.MessageAccepted,
    reports: list[Report],
    hostname: str,
    bounce_id: str,
    now: float,
    retry_until: float | None = None,  # for delay warnings: when the message expires
) -> bytes:
    actions = {r.action for r in reports}
    kind = "failed" if "failed" in actions else "delayed" if "delayed" in actions else "delivered"
    boundary = f"{bounce_id}/{hostname}"
    date = email.utils.formatdate(now)
    arrival = email.utils.formatdate(message.accepted_at)
    head, _, _ = original.partition(b"\r\n\r\n")
    # RET=FULL asks for the whole message back in a failure notice (RFC 3461 4.3); other notices carry its headers.
    # RFC 8689 5: the notice of a REQUIRETLS message carries no more than its headers.
    full = kind == "failed" and (accepted.mail_params.get("RET") or "").upper() == "FULL" and "REQUIRETLS" not in accepted.mail_params
    utf8 = needs_utf8(message, reports, head)
    lines = [  # no Return-Path: the final delivery adds it (RFC 5321 4.4), from the null sender
        f"From: MAILER-DAEMON@{hostname} (Mail Delivery System)",
        f"To: <{message.reverse_path}>",
        f"Subject: {_SUBJECTS[kind]}",
        f"Date: {date}",
        f"Message-ID: <{bounce_id}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is the mail system at host {hostname}.",
        "",
        _SAYS[kind],
        f"It is attached below{' in full' if full else ' (its headers)'}.",
        "",
        *(f"<{r.recipient}>: {r.action}{': ' + r.reason if r.reason else ''}" for r in reports),
        "",
        f"--{boundary}",
        "Content-Type: message/global-delivery-status" if utf8 else "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Vsmtp-Queue-ID: {message.queue_id}",
        *([f"Original-Envelope-Id: {accepted.mail_params['ENVID']}"] if accepted.mail_params.get("ENVID") else []),
        f"Arrival-Date: {arrival}",
        "",
    ]
    for report in reports:
        params = accepted.recipient_params.get(report.recipient) or {}
        diagnostic = report.reason
        kind_of_code = "smtp" if report.remote else "x-vsmtp"  # RFC 3464 2.3.6: an SMTP (or LMTP) server's reply
        lines += [
            f"Final-Recipient: {'rfc822' if report.recipient.isascii() else 'utf-8'}; {report.recipient}",  # RFC 6533 3
            *([f"Original-Recipient: {params['ORCPT']}"] if params.get("ORCPT") else []),
            f"Action: {report.action}",
            f"Status: {report.status}",
            *([f"Remote-MTA: dns; {report.remote}"] if report.remote else []),
            *([f"Diagnostic-Code: {kind_of_code}; {diagnostic}"] if diagnostic else []),
            *([f"Will-Retry-Until: {email.utils.formatdate(retry_until)}"] if report.action == "delayed" and retry_until else []),
            "",
        ]
    attached_type = (
        ("message/global" if utf8 else "message/rfc822") if full else ("message/global-headers" if utf8 else "text/rfc822-headers")
    )
    lines += [f"--{boundary}", f"Content-Type: {attached_type}", "", ""]
    text = "\r\n".join(lines).encode("utf-8")
    attached = original if full else head + b"\r\n"
    return text + attached + (b"" if attached.endswith(b"\r\n") else b"\r\n") + f"\r\n--{boundary}--\r\n".encode()


def needs_utf8(message: MessageState, reports: list[Report], head: bytes) -> bool:
    """Whether a notice must be a UTF-8 one (RFC 6533): an address or the original's header
    is not ASCII, or the failure was that the next hop lacks SMTPUTF8 (5.6.7)."""
    if not (message.reverse_path.isascii() and head.isascii()):
        return True
    return any(not (r.recipient.isascii() and r.reason.isascii()) or r.status == "5.6.7" for r in reports)


def _original(journal: Journal, message: MessageState) -> tuple[qe.MessageAccepted, bytes]:
    accepted = history.accepted(journal, message.queue_id)
    try:
        original = journal.blob(message.blob)
    except CorruptBlob:  # the notice goes without it: nothing altered is ever sent
        original = b"X-Vsmtp-Note: the original message is damaged in the journal\r\n\r\n"
    if accepted is None or original is None:  # purged: headers unknown
        accepted = qe.MessageAccepted(
            at=message.accepted_at, queue_id=message.queue_id, session_id="", reverse_path=message.reverse_path,
            recipients=tuple(r.address for r in message.recipients), blob=message.blob, size=message.size,
        )  # fmt: skip
        original = original or b"X-Vsmtp-Note: the original message is no longer in the journal\r\n\r\n"
    return accepted, original


def _records(
    journal: Journal,
    message: MessageState,
    config: Config,
    reports: list[Report],
    event: Callable[[str, tuple[str, ...]], qe.JournalEvent],
    *,
    now: float,
    unreported: tuple[str, ...] = (),
    retry_until: float | None = None,
    signing: Signing | None = None,
) -> list[Append]:
    """The notice as a new message from <> to the sender, DKIM-signed when `[[dkim.sign]]` has
    keys for the hostname's domain (its From), and `event(notice id, recipients reported)`
    that records it: to be appended in one transaction. Nobody to report: the event alone,
    with an empty id and `unreported`."""
    if not reports:
        return [qe.to_append(event("", unreported))]
    accepted, original = _original(journal, message)
    notice_id = ids.new_id()
    body = compose(
        message=message,
        original=original,
        accepted=accepted,
        reports=reports,
        hostname=config.hostname,
        bounce_id=notice_id,
        now=now,
        retry_until=retry_until,
    )
    dsn = qe.MessageAccepted(
        at=now,
        queue_id=notice_id,
        session_id="",
        reverse_path="",
        recipients=(message.reverse_path,),
        blob=notice_id.encode(),
        size=len(body),
        message_id=f"<{notice_id}@{config.hostname}>",
        mail_params=({"SMTPUTF8": None} if needs_utf8(message, reports, original.partition(b"\r\n\r\n")[0]) else {})
        | ({"REQUIRETLS": None} if "REQUIRETLS" in accepted.mail_params else {}),  # RFC 8689 5: the notice requires TLS too
    )
    signed: list[qe.JournalEvent] = []
    if signing is not None:
        body, signed = signing.apply(body, trusted=True, recipients=(message.reverse_path,), queue_id=notice_id, now=now)
        dsn = dataclasses.replace(dsn, size=len(body))
    done = event(notice_id, tuple(r.recipient for r in reports))
    return [qe.to_append(dsn, blobs={dsn.blob: body}), *(qe.to_append(e) for e in signed), qe.to_append(done)]


def plan(journal: Journal, message: MessageState, config: Config, *, now: float, signing: Signing | None = None) -> list[Append]:
    """The records that settle a finished message's report: the DSN (failures, and successes
    asked with NOTIFY=SUCCESS; none if nobody wants one) and message.bounced, to be appended
    in one transaction (GroupCommitWriter.append_group). Reads the journal: run it in a
    worker thread."""
    reports = []
    settled = []
    for r in message.recipients:
        if r.status == "failed":
            settled.append(r.address)
            if r.wants("FAILURE"):
                reports.append(
                    Report.of(r, "failed", failure_status(r)) if r.last_error else Report(r.address, "failed", "5.0.0", "delivery failed")
                )
        elif r.status == "delivered" and r.wants("SUCCESS"):
            # Handed to another host, which was not asked to report further: "relayed" (RFC 3464 2.3.3).
            remote = policy.remote_domain(r.address, config) is not None
            reports.append(Report(r.address, "relayed" if remote else "delivered", "2.0.0", ""))

    def bounced(bounce_id: str, recipients: tuple[str, ...]) -> qe.JournalEvent:
        return qe.MessageBounced(at=now, queue_id=message.queue_id, bounce_id=bounce_id, recipients=recipients)

    return _records(journal, message, config, reports, bounced, now=now, unreported=tuple(settled), signing=signing)


def plan_delay_warning(
    journal: Journal, message: MessageState, config: Config, *, now: float, signing: Signing | None = None
) -> list[Append]:
    """The records of a delay warning (Postfix's delay_warning_time): the DSN with Action:
    delayed for the pending recipients that want it, and message.delay_warned, in one
    transaction. Reads the journal: run it in a worker thread."""
    pending = [r for r in message.recipients if r.status == "pending"]
    reports = [Report.of(r, "delayed", delay_status(r)) for r in pending if r.wants("DELAY")]

    def warned(warning_id: str, recipients: tuple[str, ...]) -> qe.JournalEvent:
        return qe.MessageDelayWarned(at=now, queue_id=message.queue_id, warning_id=warning_id, recipients=recipients)

    retry_until = message.accepted_at + config.delivery.lifetime
    return _records(journal, message, config, reports, warned, now=now, retry_until=retry_until, signing=signing)
