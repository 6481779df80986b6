"""One message out, for other tools: as eml (the raw message) or in a JSON form (envelope,
headers, text and HTML bodies, attachments with type, name, size and SHA-256).

The operator's side (`vsmtp journal export --message ID --format eml|json`) finds the
message as it is delivered now with queue/history.py `as_delivered`; the rules' export
action (ctx.export) writes the same forms into a directory (save). Plain values in, bytes
or files out: nothing here reads the journal.
"""

from __future__ import annotations

import datetime
import email
import email.message
import email.policy
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..queue import events as qe

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    queue_id: str
    accepted_at: float
    reverse_path: str
    recipients: tuple[str, ...]
    mail_params: Mapping[str, str | None]
    session_id: str

    @classmethod
    def of(cls, accepted: qe.MessageAccepted) -> Envelope:
        return cls(
            queue_id=accepted.queue_id,
            accepted_at=accepted.at,
            reverse_path=accepted.reverse_path,
            recipients=tuple(accepted.recipients),
            mail_params=accepted.mail_params,
            session_id=accepted.session_id,
        )


def as_json(envelope: Envelope, raw: bytes) -> dict[str, Any]:
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
            "queue_id": envelope.queue_id,
            "accepted_at": datetime.datetime.fromtimestamp(envelope.accepted_at, tz=datetime.UTC).isoformat(),
            "reverse_path": envelope.reverse_path,
            "recipients": list(envelope.recipients),
            "mail_params": dict(envelope.mail_params),
            "session_id": envelope.session_id,
        },
        "headers": [[name, str(value)] for name, value in message.items()],
        "text": _lines(text.get_content()) if text is not None else None,  # "\n" line ends, as text files
        "html": _lines(html.get_content()) if html is not None else None,
        "attachments": attachments,
        "size": len(raw),
    }


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n")


def save(directory: str, form: str, envelope: Envelope, raw: bytes, *, stage: str, by: str = "") -> Path | None:
    """Write the message into `directory` as QUEUEID.STAGE.eml or .json (the export action):
    created 0600 under a temporary name, synced, then renamed, so a program watching the
    directory never reads half a file. The directory is made (0700) if missing. A failure is
    logged (the message itself is safe in the journal either way) and gives None."""
    try:
        path = _write(Path(directory), form, envelope, raw, stage=stage)
    except OSError as exc:
        log.error("%s: export by %s to %s failed: %s", envelope.queue_id, by or "a rule", directory, exc)
        return None
    log.info("%s: exported by %s to %s", envelope.queue_id, by or "a rule", path)
    return path


def _write(folder: Path, form: str, envelope: Envelope, raw: bytes, *, stage: str) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = raw if form == "eml" else (json.dumps(as_json(envelope, raw), ensure_ascii=False) + "\n").encode()
    path = folder / f"{envelope.queue_id}.{stage}.{form}"
    temporary = folder / f".{path.name}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
