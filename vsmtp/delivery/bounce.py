"""Bounces: a delivery status notification (RFC 3464) for the recipients that failed.

A message whose recipients are all final, some failed, stays in the queue state until this
module has queued its bounce: the DSN (a new message from the null sender to the original
sender) and `message.bounced` go into the journal in one transaction, so a crash can
neither lose the bounce nor send it twice.

- multipart/report; report-type=delivery-status: a human-readable part, the
  message/delivery-status part (one block per failed recipient, with Final-Recipient,
  Original-Recipient from ORCPT, Action, Status, Remote-MTA, Diagnostic-Code), and the
  original's headers (text/rfc822-headers), or the whole original (message/rfc822) when the
  sender asked for RET=FULL;
- ENVID is returned as Original-Envelope-Id; a recipient that asked NOTIFY=NEVER, or that
  did not list FAILURE in its NOTIFY, is left out; if that leaves nobody, no bounce is sent;
- never a bounce for a message from the null sender (a bounce cannot bounce).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping

from vsmtp_journal import Append, Journal

from .. import ids
from ..config import Config
from ..queue import events as ev
from ..queue import history
from ..queue.state import MessageState
from .outcomes import EXPIRED

_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_REMOTE = re.compile(r"^([A-Za-z0-9.-]+)\[([0-9A-Fa-f:.]+)\]: ")
_REPLY = re.compile(r"^[245]\d\d ")


def status_of(reason: str) -> str:
    """The RFC 3463 status for a failure reason: the server's own, else ours."""
    if reason.startswith(EXPIRED):
        return "4.4.7"  # RFC 3463: delivery time expired
    if "null MX" in reason:
        return "5.1.10"  # RFC 7505 section 4.2
    if "does not exist" in reason:
        return "5.1.2"  # bad destination system address
    found = _STATUS.search(reason)
    return found.group(1) if found and found.group(1).startswith("5") else "5.0.0"


def wants_failure_notice(params: Mapping[str, str | None] | None) -> bool:
    notify = ((params or {}).get("NOTIFY") or "FAILURE").upper().split(",")
    return "NEVER" not in notify and "FAILURE" in notify


def compose(
    *,
    message: MessageState,
    original: bytes,
    accepted: ev.MessageAccepted,
    failed: list[tuple[str, str]],  # (recipient, reason)
    hostname: str,
    bounce_id: str,
    now: float,
) -> bytes:
    boundary = f"{bounce_id}/{hostname}"
    date = email.utils.formatdate(now)
    arrival = email.utils.formatdate(message.accepted_at)
    head, _, _ = original.partition(b"\r\n\r\n")
    full = (accepted.mail_params.get("RET") or "").upper() == "FULL"
    lines = [
        "Return-Path: <>",
        f"From: MAILER-DAEMON@{hostname} (Mail Delivery System)",
        f"To: <{message.reverse_path}>",
        "Subject: Undelivered Mail Returned to Sender",
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
        "Your message could not be delivered to one or more recipients.",
        f"It is attached below{' in full' if full else ' (its headers)'}.",
        "",
        *(f"<{recipient}>: {reason}" for recipient, reason in failed),
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Vsmtp-Queue-ID: {message.queue_id}",
        *([f"Original-Envelope-Id: {accepted.mail_params['ENVID']}"] if accepted.mail_params.get("ENVID") else []),
        f"Arrival-Date: {arrival}",
        "",
    ]
    for recipient, reason in failed:
        params = accepted.recipient_params.get(recipient) or {}
        remote = _REMOTE.match(reason)
        diagnostic = reason[remote.end() :] if remote else reason
        kind = "smtp" if _REPLY.match(diagnostic) else "x-vsmtp"
        lines += [
            f"Final-Recipient: rfc822; {recipient}",
            *([f"Original-Recipient: {params['ORCPT']}"] if params.get("ORCPT") else []),
            "Action: failed",
            f"Status: {status_of(reason)}",
            *([f"Remote-MTA: dns; {remote.group(1)}"] if remote else []),
            f"Diagnostic-Code: {kind}; {diagnostic}",
            "",
        ]
    lines += [f"--{boundary}", "Content-Type: message/rfc822" if full else "Content-Type: text/rfc822-headers", "", ""]
    text = "\r\n".join(lines).encode("utf-8")
    attached = original if full else head + b"\r\n"
    return text + attached + (b"" if attached.endswith(b"\r\n") else b"\r\n") + f"\r\n--{boundary}--\r\n".encode()


def plan(journal: Journal, message: MessageState, config: Config, *, now: float) -> list[Append]:
    """The records that settle `message`'s failures: the bounce (if anyone wants one) and
    message.bounced, to be appended in one transaction (GroupCommitWriter.append_group).
    Reads the journal: run it in a worker thread."""
    failed = [(r.address, r.last_error or "delivery failed") for r in message.recipients if r.status == "failed"]
    accepted = history.accepted(journal, message.queue_id)
    original = journal.blob(message.blob)
    if accepted is None or original is None:  # purged: headers unknown
        accepted = ev.MessageAccepted(
            at=message.accepted_at, queue_id=message.queue_id, session_id="", reverse_path=message.reverse_path,
            recipients=tuple(r.address for r in message.recipients), blob=message.blob, size=message.size,
        )  # fmt: skip
        original = original or b"X-Vsmtp-Note: the original message is no longer in the journal\r\n\r\n"
    wanted = [(r, why) for r, why in failed if wants_failure_notice(accepted.recipient_params.get(r))]
    if not wanted:
        done = ev.MessageBounced(at=now, queue_id=message.queue_id, bounce_id="", recipients=tuple(r for r, _ in failed))
        return [Append(*ev.encode(done))]
    bounce_id = ids.new_id()
    body = compose(
        message=message, original=original, accepted=accepted, failed=wanted, hostname=config.hostname, bounce_id=bounce_id, now=now
    )
    dsn = ev.MessageAccepted(
        at=now,
        queue_id=bounce_id,
        session_id="",
        reverse_path="",
        recipients=(message.reverse_path,),
        blob=bounce_id.encode(),
        size=len(body),
        message_id=f"<{bounce_id}@{config.hostname}>",
    )
    done = ev.MessageBounced(at=now, queue_id=message.queue_id, bounce_id=bounce_id, recipients=tuple(r for r, _ in wanted))
    return [Append(*ev.encode(dsn), blobs={dsn.blob: body}, index=ev.index_keys(dsn)), Append(*ev.encode(done))]
