"""The smtp transport: one message to the recipients of one domain (or of one relay host),
over SMTP to its mail hosts; net/outbound.py does the talking. Runs in the delivery
process's event loop, a task per delivery, within `delivery.remote_workers` at once and
`delivery.per_domain` per destination."""

from __future__ import annotations

import dataclasses
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from vsmtp_journal import CorruptBlob, CorruptRecord, Journal

from ... import telemetry
from ...net import dane, mtasts, outbound, tlspolicy
from ...net import dns as mx
from ...queue import events as qe
from ...queue import history, policy
from ..transport import MISSING, Delivery, Outcome, Result, Services, Status


class Smtp:
    kind = "smtp"
    concurrent = True
    max_recipients = 0

    def __init__(self, services: Services) -> None:
        self.services = services
        config = services.config
        self.limit = trio.CapacityLimiter(config.delivery.remote_workers)  # SMTP deliveries at once, in all
        self.per_domain: dict[str, trio.CapacityLimiter] = {}  # and per destination domain (or relay host)
        verified = ssl.create_default_context(cafile=config.delivery.tls_ca or None)  # the policy host's name checked
        self.policies = mtasts.Policies(
            Path(config.journal.path) / "mta-sts.json",
            mx.AnswerCache(services.resolver),
            context=verified,
            port=config.delivery.mta_sts_port,
        )

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Result]:
        return [await self._one(d) for d in deliveries]

    async def _one(self, delivery: Delivery) -> Result:
        route = delivery.route
        assert isinstance(route, policy.RemoteRoute | policy.Smarthost)
        key = route.domain if isinstance(route, policy.RemoteRoute) else f"[{route.host}]:{route.port}"
        per_domain = self.per_domain.setdefault(key, trio.CapacityLimiter(self.services.config.delivery.per_domain))
        async with per_domain, self.limit:  # a busy domain waits for itself, not for the others
            return await self._deliver(delivery, route)

    async def _deliver(self, delivery: Delivery, route: policy.RemoteRoute | policy.Smarthost) -> Result:
        services, job = self.services, delivery.job
        config = services.config
        try:
            body, accepted = await trio.to_thread.run_sync(_read, services.journal, job.blob, job.queue_id)  # not in the event loop
        except CorruptBlob as exc:
            return Result([], corrupt=exc.reason)
        except CorruptRecord as exc:
            return Result([], corrupt=str(exc))
        domain = route.domain if isinstance(route, policy.RemoteRoute) else route.host
        context, continued = (accepted.trace_context, accepted.trace_continued) if accepted is not None else ({}, False)
        attributes: dict[str, Any] = {"vsmtp.queue_id": job.queue_id, "vsmtp.domain": domain, "vsmtp.recipients": len(delivery.recipients)}
        with telemetry.spans.delivery(telemetry.SPAN_DELIVERY, context, continued=continued, **attributes) as span:
            if body is None:
                return Result.all(delivery, "failed", MISSING, enhanced="5.3.0", stage="route")
            relayhost = policy.smarthost(config)
            relay = route if isinstance(route, policy.Smarthost) else relayhost
            try:
                with telemetry.span(telemetry.SPAN_MX, attributes={"vsmtp.domain": relay.host if relay is not None else domain}):
                    hosts = await (
                        mx.host(relay.host, services.resolver) if relay is not None else mx.exchangers(domain, services.resolver)
                    )
            except mx.DnsPermanent as exc:
                telemetry.spans.failed(span, "failed", str(exc))
                return Result.all(delivery, "failed", str(exc), enhanced=exc.status, stage="dns")
            except mx.DnsTemporary as exc:
                telemetry.spans.failed(span, "deferred", str(exc))
                return Result.all(delivery, "deferred", str(exc), enhanced="4.4.3", stage="dns")  # 4.4.3: directory server failure
            addresses = tuple(a for a, _ in delivery.recipients)
            message = outbound.OutboundMessage(
                reverse_path=job.reverse_path,
                recipients=addresses,
                body=body,
                # RFC 6531 3.4: asked for when the message needs it: an address or a header field
                # in UTF-8 (a client's SMTPUTF8 on an all-ASCII message is not passed on, as
                # Postfix's smtputf8_autodetect does), else a host without it could not take it.
                smtputf8=not (
                    job.reverse_path.isascii() and all(a.isascii() for a in addresses) and body.partition(b"\r\n\r\n")[0].isascii()
                ),
                requiretls=accepted is not None and "REQUIRETLS" in accepted.mail_params,
            )
            settings = outbound.ClientSettings(
                helo_name=config.hostname,
                port=config.delivery.remote_port,
                before_data=lambda recipients, host, address: services.started(job.queue_id, recipients, host, address),
                cache=services.connections,
                host_limits=services.host_limits,
            )
            via_relayhost = relay is not None and not isinstance(route, policy.Smarthost)  # the configured relay host
            secured = await self._secure(delivery, route, relay, via_relayhost, hosts, message, settings)
            if isinstance(secured, Stop):  # REQUIRETLS that cannot be met fails (5.7.30); the rest waits (4.7.5)
                status: Status = "failed" if secured.final else "deferred"
                telemetry.spans.failed(span, status, secured.why)
                return Result.all(delivery, status, secured.why, enhanced="5.7.30" if secured.final else "4.7.5", stage="tls")
            if isinstance(secured, Result):
                telemetry.spans.failed(span, "deferred", secured.outcomes[0].text)
                return secured
            hosts, plan, sts, published = secured
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
            kind = "tlsa" if plan.applies else "sts" if sts is not None and sts.mode != "none" else "no-policy-found"
            facts: list[qe.JournalEvent] = [
                qe.DeliveryAttempted(
                    at=now,
                    queue_id=job.queue_id,
                    host=a.host,
                    address=a.address,
                    tls=a.tls,
                    reply=a.reply,
                    domain=domain.lower(),
                    policy=kind,
                    tls_result=a.tls_result,
                    tlsa=tuple(str(r) for r in plan.records.get(a.host, ())),
                )
                for a in tried
            ]
            facts += _refused(job.queue_id, domain, plan.refused)
            unfetched = self.policies.unfetched.get(domain.lower()) if sts is None and published and relay is None else None
            if unfetched:  # RFC 8460 4.3.1: a policy announced but not had is an sts failure of its own
                facts.append(_policy_failure(job.queue_id, domain, unfetched))
            return Result([_outcome(address, outcomes[address]) for address in addresses], facts)

    async def _secure(
        self,
        delivery: Delivery,
        route: policy.RemoteRoute | policy.Smarthost,
        relay: policy.Smarthost | None,
        via_relayhost: bool,  # `relay` is the configured relay host (relayhost.url), not a rule's
        hosts: list[mx.Exchanger],
        message: outbound.OutboundMessage,
        settings: outbound.ClientSettings,
    ) -> Stop | Result | tuple[list[mx.Exchanger], dane.Plan, mtasts.Policy | None, bool]:
        """The TLS of this delivery, set on `settings`: its level (a delivery rule's, the
        destination's, or the relay host's), then what the destination publishes (DANE, else
        MTA-STS, unless the message says TLS-Required: No), then REQUIRETLS. Returns the hosts
        to try, the DANE plan, the MTA-STS policy and whether published policies counted; or
        why the mail cannot go (Stop); or the Result of a destination none of whose hosts
        DANE lets be tried."""
        config, job = self.services.config, delivery.job
        services = self.services
        domain = route.domain if isinstance(route, policy.RemoteRoute) else route.host
        body = message.body
        chosen = route.tls  # a delivery rule's level for this route, over the configuration's
        level = tlspolicy.level_of(chosen or config.delivery.tls_policy.get(domain.lower(), "may"))
        if level in tlspolicy.DANE_LEVELS and not config.dns.dnssec:  # a rule's (the configuration refuses its own)
            return Stop(f"TLS level {level} (a delivery rule's) needs a validating resolver: dns.dnssec = true")
        base = "may" if level in tlspolicy.DANE_LEVELS else level  # hosts DANE does not cover (dane-only: none are tried)
        settings.tls = tlspolicy.TlsPolicy(level=base, nexthop=domain.lower(), ca_file=config.delivery.tls_ca)
        plan = dane.Plan()
        # RFC 8689 5: "TLS-Required: No" (unless the message asked for REQUIRETLS, which wins)
        # sets aside the policies the destination publishes (DANE, MTA-STS), not the configuration.
        published = message.requiretls or not _tls_not_required(body)
        configured = bool(chosen) or domain.lower() in config.delivery.tls_policy  # a level given, not the default
        dane_applies = level in tlspolicy.DANE_LEVELS or (level == "may" and not configured)  # explicit may: no DANE
        if published and relay is None and config.dns.dnssec and dane_applies:
            plan = await dane.plan(hosts, port=settings.port, level=level, nexthop=domain.lower(), resolve=services.resolver)
            settings.per_host = plan.policies
            hosts = [h for h in hosts if h.host not in plan.refused]
            if not hosts:
                text = "; ".join(why for why, _ in plan.refused.values())
                deferred = outbound.Outcome("deferred", text, enhanced="4.7.5", stage="tls")
                return Result([_outcome(a, deferred) for a in message.recipients], _refused(job.queue_id, domain, plan.refused))
        sts: mtasts.Policy | None = None
        looks_for_sts = (config.delivery.mta_sts and not configured) or message.requiretls
        if published and relay is None and looks_for_sts and not plan.applies:  # RFC 8461 2: DANE, where published, over MTA-STS
            sts = await self.policies.policy(domain)
            if sts is not None and sts.mode == "enforce":  # RFC 8461 4.1: only its MX hosts, only verified
                hosts = [h for h in hosts if sts.allows(h.host)]
                if not hosts:
                    return Stop(f"MTA-STS: no MX host of {domain} matches its policy (mx: {', '.join(sts.mx)})")
                settings.tls = tlspolicy.TlsPolicy(level="verify", nexthop=domain.lower(), ca_file=config.delivery.tls_ca, by="MTA-STS")
            elif sts is not None and sts.mode == "testing":  # RFC 8461 5: delivered, and what enforce would refuse reported
                settings.tls = dataclasses.replace(settings.tls, audit=True)
        if relay is not None:
            settings.port, settings.implicit_tls = relay.port, relay.implicit_tls
        if relay is not None and via_relayhost:  # a rule's level, if it gave one (DANE is not for relay hosts)
            level = tlspolicy.level_of(chosen if chosen and chosen not in tlspolicy.DANE_LEVELS else config.relayhost.tls)
            settings.tls = tlspolicy.TlsPolicy(level=level, nexthop=relay.host, ca_file=config.relayhost.ca)
            if config.relayhost.username:
                settings.auth = (config.relayhost.username, config.relayhost.password)
        if message.requiretls and plan.applies:  # RFC 8689 4.2: hosts DANE authenticates, only
            hosts = [h for h in hosts if plan.authenticated(h.host)]
            if not hosts:
                return Stop(f"REQUIRETLS: no MX host of {domain} is authenticated by its TLSA records", final=True)
        elif message.requiretls:  # RFC 8689 4.2: authenticated hosts only, over verified TLS
            refused = _requiretls(
                settings, relay=relay, via_relayhost=via_relayhost, sts=sts, domain=domain, ca_file=config.delivery.tls_ca
            )
            if refused:
                return Stop(refused, final=True)
            if sts is not None:
                hosts = [h for h in hosts if sts.allows(h.host)]
        return hosts, plan, sts, published


@dataclass(frozen=True, slots=True)
class Stop:
    """Why a delivery cannot go over TLS as it must: it waits, or (final) it fails."""

    why: str
    final: bool = False


def _policy_failure(queue_id: str, domain: str, why: str) -> qe.JournalEvent:
    host = f"mta-sts.{domain.lower()}"
    return qe.DeliveryAttempted(
        at=time.time(),
        queue_id=queue_id,
        host=host,
        address="",
        tls=False,
        reply=why,
        domain=domain.lower(),
        policy="sts",
        tls_result="sts-policy-fetch-error",
    )


def _refused(queue_id: str, domain: str, refused: dict[str, tuple[str, str]]) -> list[qe.JournalEvent]:
    """The hosts DANE left out, as attempts that failed before connecting (RFC 8460 counts them)."""
    now = time.time()
    return [
        qe.DeliveryAttempted(
            at=now, queue_id=queue_id, host=host, address="", tls=False, reply=why, domain=domain.lower(), policy="tlsa", tls_result=result
        )
        for host, (why, result) in refused.items()
    ]


def _requiretls(
    settings: outbound.ClientSettings,
    *,
    relay: policy.Smarthost | None,
    via_relayhost: bool,
    sts: mtasts.Policy | None,
    domain: str,
    ca_file: str,
) -> str:
    """For a REQUIRETLS message: raise the level to verify (at least), and the reason it cannot
    go at all ("" : it can). Its next hop must be authenticated: the configured relay host by
    its name, or MX hosts an MTA-STS policy names (DANE is handled before, where it applies)."""
    if relay is None and (sts is None or sts.mode == "none"):
        return f"REQUIRETLS: the MX hosts of {domain} cannot be authenticated (no DANE TLSA records, no MTA-STS policy)"
    if not settings.tls.verified:
        nexthop = relay.host if relay is not None else domain.lower()
        ca = settings.tls.ca_file if via_relayhost else ca_file
        settings.tls = tlspolicy.TlsPolicy(level="verify", nexthop=nexthop, ca_file=ca, by="REQUIRETLS")
    return ""


_TLS_NOT_REQUIRED = re.compile(rb"^tls-required:[ \t]*no[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def _tls_not_required(body: bytes) -> bool:
    """Whether the header section says "TLS-Required: No" (RFC 8689 5)."""
    return _TLS_NOT_REQUIRED.search(body.partition(b"\r\n\r\n")[0]) is not None


def _outcome(recipient: str, said: outbound.Outcome) -> Outcome:
    return Outcome(
        recipient=recipient,
        status=said.status,
        text=said.text,
        code=said.code,
        enhanced=said.enhanced,
        host=said.host,
        address=said.address,
        stage=said.stage,
        tls=said.tls,
    )


def _read(journal: Journal, blob: bytes, queue_id: str) -> tuple[bytes | None, qe.MessageAccepted | None]:
    """The message (up to limits.message_size) and how it was accepted (its MAIL parameters)."""
    return journal.blob(blob), history.accepted(journal, queue_id)
