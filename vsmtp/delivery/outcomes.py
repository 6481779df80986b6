"""What a failed attempt becomes, whatever the transport: deferred on the retry schedule,
or, once the message has waited `delivery.lifetime`, failed for good (and message.expired)."""

from __future__ import annotations

from ..config import Config
from ..queue import events as qe
from ..queue import policy

EXPIRED = "message expired"  # how the reason of an expired recipient begins (bounce.py reads it)


def deferred(
    queue_id: str,
    address: str,
    attempts: int,
    *,
    now: float,
    reason: str,
    config: Config,
    accepted_at: float,
    transport: str = "smtp",
) -> qe.DeliveryDeferred | qe.DeliveryFailed:
    """A failed attempt, to be tried again on the configured schedule; or, once the message
    has been queued for `delivery.lifetime`, a failure (Postfix's maximal_queue_lifetime)."""
    retry_at = policy.retry_at(attempts + 1, now=now, config=config)
    if retry_at - accepted_at > config.delivery.lifetime:
        days = config.delivery.lifetime / 86400
        expired = f"{EXPIRED}: not delivered in {days:g} days in the queue (last error: {reason})"
        return qe.DeliveryFailed(at=now, queue_id=queue_id, recipient=address, transport=transport, reason=expired)
    return qe.DeliveryDeferred(at=now, queue_id=queue_id, recipient=address, transport=transport, reason=reason, retry_at=retry_at)


def with_expiry(events: list[qe.JournalEvent]) -> list[qe.JournalEvent]:
    """`events`, and message.expired after them for the recipients that ran out of time."""
    expired = [e for e in events if isinstance(e, qe.DeliveryFailed) and e.reason.startswith(EXPIRED)]
    if not expired:
        return events
    return [*events, qe.MessageExpired(at=expired[0].at, queue_id=expired[0].queue_id, recipients=tuple(e.recipient for e in expired))]
