"""One message out of the journal, for other tools: `vsmtp journal export --message ID
--format eml|json`. The message as it is delivered (after any post-queue change), and a
JSON form of it: envelope, headers, text and HTML bodies, attachments (type, name, size,
SHA-256)."""

from __future__ import annotations

import dataclasses
import datetime
import email
import email.message
import email.policy
import hashlib
from typing import Any

from vsmtp_journal import Journal

from . import events as ev
from . import history


def current(journal: Journal, ident: str) -> tuple[ev.MessageAccepted, bytes] | None:
    """message.accepted and the message as it is delivered now (after its last
    message.modified: that body and envelope); None when the journal has no such message or
    its body."""
    found = history.trace(journal, ident)
    if found is None:
        return None
    accepted: ev.MessageAccepted | None = None
    blob = b""
    for record in found.records:
        if record.tag in (ev.MessageAccepted.TAG, ev.MessageModified.TAG):
            event = ev.decode(record)
            if isinstance(event, ev.MessageAccepted):
                accepted, blob = event, event.blob
            elif isinstance(event, ev.MessageModified) and accepted is not None:
                blob = event.blob  # and the envelope as it is delivered now
                accepted = dataclasses.replace(accepted, reverse_path=event.reverse_path, recipients=event.recipients)
    body = journal.blob(blob) if accepted is not None else None
    return (accepted, body) if accepted is not None and body is not None else None


def as_json(accepted: ev.MessageAccepted, raw: bytes) -> dict[str, Any]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    attachments = []
    for part in message.iter_attachments() if message.is_multipart() else []:
        assert isinstance(part, email.message.EmailMessage)
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
        attachments.append(
            {
                "type": part.get_content_type(),
                "name": part.get_filename(),
                "size": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            }
        )
    return {
        "envelope": {
            "queue_id": accepted.queue_id,
            "accepted_at": datetime.datetime.fromtimestamp(accepted.at, tz=datetime.UTC).isoformat(),
            "reverse_path": accepted.reverse_path,
            "recipients": list(accepted.recipients),
            "mail_params": dict(accepted.mail_params),
            "session_id": accepted.session_id,
        },
        "headers": [[name, str(value)] for name, value in message.items()],
        "text": _lines(text.get_content()) if text is not None else None,  # "\n" line ends, as text files
        "html": _lines(html.get_content()) if html is not None else None,
        "attachments": attachments,
        "size": len(raw),
    }


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n")
