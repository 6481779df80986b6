"""maillog: one Postfix-style line per message event, on the logger "vsmtp.maillog".

Administrators who grep mail logs find what they are used to:

    25X7TJD5Z86FJMF6M9M: from=<a@example.org>, size=178, nrcpt=1 (queue active)
    25X7TJD5Z86FJMF6M9M: to=<bob@localhost>, relay=maildir, status=sent (var/mail/...)
"""

from __future__ import annotations

import logging

import vsmtp
from vsmtp import events

log = logging.getLogger("vsmtp.maillog")


def format_event(event: object) -> str | None:
    """The log line for `event`, or None for events this log does not show."""
    match event:
        case events.MessageAccepted():
            return f"{event.queue_id}: from=<{event.reverse_path}>, size={event.size}, nrcpt={len(event.recipients)} (queue active)"
        case events.DeliverySucceeded():
            return f"{event.queue_id}: to=<{event.recipient}>, relay={event.transport}, status=sent ({event.detail})"
        case events.DeliveryDeferred():
            return f"{event.queue_id}: to=<{event.recipient}>, relay={event.transport}, status=deferred ({event.reason})"
        case events.DeliveryFailed():
            return f"{event.queue_id}: to=<{event.recipient}>, relay={event.transport}, status=bounced ({event.reason})"
        case events.RecipientRejected():
            return f"NOQUEUE: reject: RCPT to=<{event.address}>: {event.reply} (session {event.session_id})"
    return None


@vsmtp.hookimpl
def vsmtp_event(event: object) -> None:
    line = format_event(event)
    if line is not None:
        log.info("%s", line)
