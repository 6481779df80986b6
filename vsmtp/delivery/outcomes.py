"""What a transport's outcomes become in the journal, whatever the transport: delivered;
failed; or deferred on the retry schedule until the message has waited
`delivery.lifetime`, then failed for good (and message.expired). One log line per recipient
is written here, and nowhere else."""

from __future__ import annotations

import logging
from typing import TypedDict

from ..config import Config
from ..queue import events as qe
from ..queue import policy
from ..queue.state import CORRUPT
from .transport import Delivery, Outcome, Result

log = logging.getLogger(__name__)

EXPIRED = "message expired"  # how the reason of an expired recipient begins
EXPIRED_STATUS = "4.4.7"  # RFC 3463: delivery time expired


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
    outcome: Outcome | None = None,
    delivery: Delivery | None = None,
) -> qe.DeliveryDeferred | qe.DeliveryFailed:
    """A failed attempt, to be tried again on the configured schedule; or, once the message
    has been queued for `delivery.lifetime`, a failure (Postfix's maximal_queue_lifetime)."""
    facts = _facts(outcome, delivery, default="4.0.0")
    retry_at = policy.retry_at(attempts + 1, now=now, config=config)
    if retry_at - accepted_at > config.delivery.lifetime:
        days = config.delivery.lifetime / 86400
        expired = f"{EXPIRED}: not delivered in {days:g} days in the queue (last error: {reason})"
        facts["status"] = EXPIRED_STATUS
        return qe.DeliveryFailed(at=now, queue_id=queue_id, recipient=address, transport=transport, reason=expired, expired=True, **facts)
    return qe.DeliveryDeferred(at=now, queue_id=queue_id, recipient=address, transport=transport, reason=reason, retry_at=retry_at, **facts)


def failed(
    queue_id: str,
    address: str,
    *,
    now: float,
    reason: str,
    transport: str,
    outcome: Outcome | None = None,
    delivery: Delivery | None = None,
) -> qe.DeliveryFailed:
    facts = _facts(outcome, delivery, default="5.0.0")
    return qe.DeliveryFailed(at=now, queue_id=queue_id, recipient=address, transport=transport, reason=reason, **facts)


class _Facts(TypedDict, total=False):
    code: int
    status: str
    host: str
    address: str
    stage: str
    tls: bool
    route: str
    routed_by: str


def _facts(outcome: Outcome | None, delivery: Delivery | None, *, default: str) -> _Facts:
    """The attempt as data, for the v2 delivery events (what bounces are built from)."""
    facts: _Facts = {"status": default}
    if delivery is not None:
        facts["route"], facts["routed_by"] = delivery.route.text, delivery.routed_by
    if outcome is not None:
        facts["status"] = outcome.enhanced if outcome.enhanced[:1] == default[:1] else default
        facts["code"], facts["host"], facts["address"] = outcome.code, outcome.host, outcome.address
        facts["stage"], facts["tls"] = outcome.stage, outcome.tls
    return facts


def events(delivery: Delivery, result: Result, config: Config, *, now: float) -> list[qe.JournalEvent]:
    """The journal events of one Delivery's Result: the facts the transport gathered (the
    connections it made), then each recipient's outcome; message.expired after them for the
    recipients that ran out of time."""
    job = delivery.job
    kind, route = delivery.route.kind, delivery.route.text
    if result.corrupt:
        log.error("%s: not delivered, held in the quarantine %r: %s", job.queue_id, CORRUPT, result.corrupt)
        return [qe.MessageCorrupted(at=now, queue_id=job.queue_id, blob=job.blob, reason=result.corrupt)]
    found: list[qe.JournalEvent] = list(result.facts)
    attempts = dict(delivery.recipients)
    logging_info = log.isEnabledFor(logging.INFO)  # the line's arguments cost, per message: only when it is written
    for outcome in result.outcomes:
        address = outcome.recipient
        if logging_info:
            log.info(
                "%s: to=<%s>, transport=%s, relay=%s, status=%s (%s)",
                job.queue_id, address, kind, outcome.where or "none", outcome.status, outcome.reply,
            )  # fmt: skip
        if outcome.status == "delivered":
            detail = outcome.detail or f"{outcome.where}{' (TLS)' if outcome.tls else ''}: {outcome.reply}"
            found.append(
                qe.DeliverySucceeded(
                    at=now,
                    queue_id=job.queue_id,
                    recipient=address,
                    transport=kind,
                    detail=detail,
                    route=route,
                    routed_by=delivery.routed_by,
                )
            )
            if address in job.in_doubt:
                log.warning("%s: %s may have received this message twice (an attempt was cut off after its data)", job.queue_id, address)
                found.append(qe.PossibleDuplicate(at=now, queue_id=job.queue_id, recipient=address, detail=detail))
        elif outcome.status == "failed":
            found.append(failed(job.queue_id, address, now=now, reason=outcome.reason, transport=kind, outcome=outcome, delivery=delivery))
        else:
            found.append(
                deferred(
                    job.queue_id,
                    address,
                    attempts.get(address, 0),
                    now=now,
                    reason=outcome.reason,
                    config=config,
                    accepted_at=job.accepted_at,
                    transport=kind,
                    outcome=outcome,
                    delivery=delivery,
                )
            )
    return with_expiry(found)


def with_expiry(events: list[qe.JournalEvent]) -> list[qe.JournalEvent]:
    """`events`, and message.expired after them for the recipients that ran out of time."""
    expired = [e for e in events if isinstance(e, qe.DeliveryFailed) and e.expired]
    if not expired:
        return events
    return [*events, qe.MessageExpired(at=expired[0].at, queue_id=expired[0].queue_id, recipients=tuple(e.recipient for e in expired))]
