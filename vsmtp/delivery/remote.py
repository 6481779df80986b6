"""The SMTP transport: one message to the recipients of one domain (net/outbound.py does the
talking), turned into journal events. Runs in the delivery process's event loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import dns.asyncresolver
import trio
from vsmtp_journal import CorruptBlob, CorruptRecord, Journal

from .. import telemetry
from ..config import Config
from ..net import dns as mx
from ..net import outbound
from ..queue import events as qe
from ..queue import history, policy
from ..queue.state import CORRUPT
from .outcomes import deferred, with_expiry

log = logging.getLogger(__name__)


async def deliver(
    *,
    queue_id: str,
    reverse_path: str,
    blob: bytes,
    accepted_at: float,
    domain: str,
    recipients: list[tuple[str, int]],  # (address, attempts so far)
    config: Config,
    journal: Journal,
    resolver: dns.asyncresolver.Resolver,
    in_doubt: frozenset[str] = frozenset(),  # recipients whose last attempt was cut after its data
    before_data: Callable[[list[str], str, str], Awaitable[None]] | None = None,
    cache: outbound.ConnectionCache | None = None,
    host_limits: outbound.HostLimits | None = None,
    route: policy.Smarthost | None = None,  # a delivery rule chose this host (ctx.set_route)
) -> list[qe.JournalEvent]:
    try:
        body, accepted = await trio.to_thread.run_sync(_read, journal, blob, queue_id)  # not in the event loop
    except (CorruptBlob, CorruptRecord) as exc:
        log.error("%s: not delivered, held in the quarantine %r: %s", queue_id, CORRUPT, exc)
        return [qe.MessageCorrupted(at=time.time(), queue_id=queue_id, blob=blob, reason=str(exc))]
    context, continued = (accepted.trace_context, accepted.trace_continued) if accepted is not None else ({}, False)
    attributes = {"vsmtp.queue_id": queue_id, "vsmtp.domain": domain, "vsmtp.recipients": len(recipients)}
    with telemetry.spans.delivery(telemetry.SPAN_DELIVERY, context, continued=continued, **attributes) as span:
        now = time.time()
        if body is None:
            reason = "message body missing from the journal"
            return [qe.DeliveryFailed(at=now, queue_id=queue_id, recipient=a, transport="smtp", reason=reason) for a, _ in recipients]
        relayhost = policy.smarthost(config)
        relay = route or relayhost
        try:
            with telemetry.span(telemetry.SPAN_MX, attributes={"vsmtp.domain": relay.host if relay is not None else domain}):
                hosts = await (mx.host(relay.host, resolver) if relay is not None else mx.exchangers(domain, resolver))
        except mx.DnsPermanent as exc:
            telemetry.spans.failed(span, "failed", str(exc))
            return [qe.DeliveryFailed(at=now, queue_id=queue_id, recipient=a, transport="smtp", reason=str(exc)) for a, _ in recipients]
        except mx.DnsTemporary as exc:
            telemetry.spans.failed(span, "deferred", str(exc))
            return with_expiry(
                [deferred(queue_id, a, n, now=now, reason=str(exc), config=config, accepted_at=accepted_at) for a, n in recipients]
            )
        addresses = tuple(a for a, _ in recipients)
        message = outbound.OutboundMessage(
            reverse_path=reverse_path,
            recipients=addresses,
            body=body,
            # RFC 6531 3.4: asked for when the sender asked for it, or when an address needs it.
            smtputf8=(accepted is not None and "SMTPUTF8" in accepted.mail_params)
            or not (reverse_path.isascii() and all(a.isascii() for a in addresses)),
        )
        settings = outbound.ClientSettings(
            helo_name=config.hostname, port=config.delivery.remote_port, before_data=before_data, cache=cache
        )
        settings.host_limits = host_limits
        settings.require_tls = config.delivery.tls_policy.get(domain.lower()) == "require"
        if relay is not None:
            settings.port, settings.implicit_tls = relay.port, relay.implicit_tls
        if relay is not None and relay is relayhost:
            settings.require_tls = config.relayhost.tls == "require"
            if config.relayhost.username:
                settings.auth = (config.relayhost.username, config.relayhost.password)
        tried: list[outbound.Attempt] = []
        outcomes = await outbound.deliver(message, hosts, settings, tried)
        first = next(iter(outcomes.values()))
        if telemetry.enabled():
            span.set_attribute("server.address", first.host)
            span.set_attribute("network.peer.address", first.address)
            span.set_attribute("server.port", settings.port)
            span.set_attribute("vsmtp.tls", first.tls)
            telemetry.spans.outcome(span, {o.status for o in outcomes.values()}, first.reply)
        now = time.time()
        events: list[qe.JournalEvent] = [
            qe.DeliveryAttempted(at=now, queue_id=queue_id, host=a.host, address=a.address, tls=a.tls, reply=a.reply) for a in tried
        ]
        for address, attempts in recipients:
            outcome = outcomes[address]
            where = f"{outcome.host}[{outcome.address}]" if outcome.host else ""
            if outcome.status == "delivered":
                detail = f"{where}{' (TLS)' if outcome.tls else ''}: {outcome.reply}"
                events.append(qe.DeliverySucceeded(at=now, queue_id=queue_id, recipient=address, transport="smtp", detail=detail))
                if address in in_doubt:
                    log.warning("%s: %s may have received this message twice (an attempt was cut off after its data)", queue_id, address)
                    events.append(qe.PossibleDuplicate(at=now, queue_id=queue_id, recipient=address, detail=detail))
            elif outcome.status == "failed":
                reason = f"{where}: {outcome.reply}" if where else outcome.reply
                events.append(qe.DeliveryFailed(at=now, queue_id=queue_id, recipient=address, transport="smtp", reason=reason))
            else:
                reason = f"{where}: {outcome.reply}" if where else outcome.reply
                events.append(deferred(queue_id, address, attempts, now=now, reason=reason, config=config, accepted_at=accepted_at))
            log.info("%s: to=<%s>, relay=%s, status=%s (%s)", queue_id, address, where or "none", outcome.status, outcome.reply)
        return with_expiry(events)


def _read(journal: Journal, blob: bytes, queue_id: str) -> tuple[bytes | None, qe.MessageAccepted | None]:
    """The message (up to limits.message_size) and how it was accepted (its MAIL parameters)."""
    return journal.blob(blob), history.accepted(journal, queue_id)
