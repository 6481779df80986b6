"""vsmtp's spans: their names, their attributes, and the helpers that open them where work
happens. Each helper costs a function call when tracing is off (the exporter "none").

The receiving side: `smtp.session` (a span event per command, with its reply), and inside it
`smtp.message` from the end of a message to its reply, with the checks (`check NAME`), the
rules and plugin hooks (`hook NAME`), the DNS lookups (`dns TYPE`) and the journal commit
(`journal.commit`) below it. The delivery side: `postq`, `smtp.delivery` (an attempt to one
domain: `mx lookup`, `connect`, `tls handshake`, `smtp transaction`) and `local.delivery`,
each linked to the message's span, or its child when the message continues a client's trace
(a traceparent header).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import dns.asyncresolver
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..smtp.replies import Reply
from . import metrics, tracing

if TYPE_CHECKING:
    from vsmtp_journal import Commit

SPAN_SESSION = "smtp.session"  # one per SMTP connection
SPAN_MESSAGE = "smtp.message"  # from the end of a message to its reply
SPAN_COMMIT = "journal.commit"  # the durable commit awaited before the 250
SPAN_DELIVERY = "smtp.delivery"  # one per remote delivery attempt (one domain's recipients)
SPAN_LOCAL = "local.delivery"  # one per job delivered into local mailboxes
SPAN_POSTQ = "postq"  # the post-queue stage of one message
SPAN_MX = "mx lookup"
SPAN_CONNECT = "connect"
SPAN_TLS = "tls handshake"
SPAN_TRANSACTION = "smtp transaction"

_provider: trace.TracerProvider = trace.NoOpTracerProvider()
_tracer: trace.Tracer = _provider.get_tracer("vsmtp")
_on = False


def install(provider: trace.TracerProvider | None) -> None:
    global _provider, _tracer, _on
    _provider = provider if provider is not None else trace.NoOpTracerProvider()
    _tracer = _provider.get_tracer("vsmtp")
    _on = provider is not None


def enabled() -> bool:
    """Whether spans are recorded (so that work only a span needs can be skipped)."""
    return _on


def tracer() -> trace.Tracer:
    return _tracer


def span(name: str, **kwargs: Any) -> contextlib.AbstractContextManager[Span]:
    """A child of the current span; nothing at all when tracing is off."""
    if not _on:
        return contextlib.nullcontext(trace.INVALID_SPAN)
    return _tracer.start_as_current_span(name, **kwargs)


def leaf(name: str) -> contextlib.AbstractContextManager[Span]:
    """A child of the current span that makes no children of its own (the journal commit)."""
    if not _on:
        return contextlib.nullcontext(trace.INVALID_SPAN)
    return tracing.ending(_tracer.start_span(name))


# -- the receiving session -----------------------------------------------------------------


def session_attributes(*, client: tuple[str, int], server: tuple[str, int], listener: str, session_id: str) -> dict[str, Any]:
    """The stable semantic conventions for a connection, and ours."""
    return {
        "client.address": client[0],
        "client.port": client[1],
        "server.address": server[0],
        "server.port": server[1],
        "network.transport": "tcp",
        "network.type": "ipv6" if ":" in server[0] else "ipv4",
        "vsmtp.listener": listener,
        "vsmtp.session_id": session_id,
    }


def command(span: Span, event: object, reply: Reply) -> None:
    """A command answered: a span event on the session, and the commands metric."""
    metrics.command(event, reply)
    if _on:  # one attribute for a positive reply, the same mapping each time: a session sends a great many of them
        name = metrics.VERBS.get(type(event), "OTHER")
        if reply.code < 400:
            attributes = _POSITIVE.get(reply.code) or _POSITIVE.setdefault(reply.code, MappingProxyType({"smtp.reply.code": reply.code}))
        else:
            attributes = {"smtp.reply.code": reply.code, "smtp.status": reply.enhanced or ""}
        span.add_event(name, attributes)


_POSITIVE: dict[int, Mapping[str, Any]] = {}  # a positive reply's event attributes, by code (read-only)


def tls_started(span: Span, version: str, cipher: str) -> None:
    metrics.tls_handshake("inbound", True)
    if _on:
        span.set_attribute("tls.protocol.version", version.removeprefix("TLSv"))
        span.set_attribute("tls.protocol.name", "tls")
        span.set_attribute("tls.cipher", cipher)


_TRACEPARENT = re.compile(rb"^traceparent:[ \t]*([0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2})[ \t]*\r?$", re.I | re.M)


def traceparent(head: bytes) -> dict[str, str]:
    """The W3C trace context a message carries in a traceparent header, or none."""
    found = _TRACEPARENT.search(head)
    return {"traceparent": found.group(1).decode().lower()} if found else {}


_W3C = TraceContextTextMapPropagator()
_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_FLAGS = [TraceFlags(n) for n in range(256)]


def remote_context(carrier: Mapping[str, str]) -> SpanContext | None:
    """The span context a W3C carrier names (traceparent, and tracestate if any), or None when
    it names none that is valid. A version-00 traceparent alone (what vsmtp writes into
    message.accepted, and what applications send) is read here in one match; anything else
    goes to the SDK's W3C propagator itself, not the global one (OTEL_PROPAGATORS, with
    baggage): the carrier is W3C whatever the environment says. Both ways give the same
    answer (tests/telemetry/test_tracing.py)."""
    if len(carrier) == 1:
        found = _VERSION_00.fullmatch(carrier.get("traceparent", ""))
        if found is not None:
            trace_id, span_id = int(found[1], 16), int(found[2], 16)
            if not trace_id or not span_id:
                return None
            return SpanContext(trace_id, span_id, True, _FLAGS[int(found[3], 16)])
    extracted = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
    return extracted if extracted.is_valid else None


def message(head: bytes, *, trusted: bool) -> tuple[contextlib.AbstractContextManager[Span], bool]:
    """The span of one message, from its end to its reply (to enter), and whether it
    continues the client's trace: a trusted client (authenticated, or in relay.networks)
    that sends a traceparent header makes it a child of that trace, linked to the session."""
    if not _on:
        return contextlib.nullcontext(trace.INVALID_SPAN), False
    parent = remote_context(traceparent(head)) if trusted else None
    if parent is None:
        return _tracer.start_as_current_span(SPAN_MESSAGE), False
    session = trace.get_current_span().get_span_context()
    links = [trace.Link(session, {"vsmtp.link": "session"})] if session.is_valid else []
    return _tracer.start_as_current_span(SPAN_MESSAGE, context=trace.set_span_in_context(trace.NonRecordingSpan(parent)), links=links), True


def verdict(span: Span, reply: Reply) -> None:
    if _on:
        span.set_attribute("smtp.reply.code", reply.code)
        span.set_attribute("vsmtp.verdict", "accepted" if reply.code == 250 else "refused")


def identify(span: Span, queue_id: str, message_id: str, size: int, recipients: int, commit: Commit | None) -> None:
    """On the message's span: what the message is, once it is queued, and the figures of the
    journal commit that made it durable (when still known)."""
    if _on:
        span.set_attributes(
            {"vsmtp.queue_id": queue_id, "vsmtp.message_id": message_id, "vsmtp.size": size, "vsmtp.recipients": recipients}
        )
        if commit is not None:
            span.set_attribute("vsmtp.journal.commit_seconds", commit.seconds)
            span.set_attribute("vsmtp.journal.batch_records", commit.records)


def current_context(span: Span) -> dict[str, str]:
    """The W3C trace context of `span` (the message's), to keep with it (message.accepted):
    written here as the W3C propagator writes it, without a context to carry it there."""
    if not _on:
        return {}
    found = span.get_span_context()
    if not found.is_valid:
        return {}
    carrier = {"traceparent": f"00-{found.trace_id:032x}-{found.span_id:016x}-{found.trace_flags:02x}"}
    if found.trace_state:
        carrier["tracestate"] = found.trace_state.to_header()
    return carrier


# -- the delivery side ---------------------------------------------------------------------


def delivery(
    name: str,
    trace_context: Mapping[str, str],
    *,
    continued: bool,
    start_time: int | None = None,
    current: bool = True,
    **attributes: Any,
) -> contextlib.AbstractContextManager[Span]:
    """A delivery span: a child of the message's span when the message continues a client's
    trace, else a new trace linked to it. `current=False` for a span that has no children
    (a local delivery's): it is not made the current span."""
    if not _on:
        return contextlib.nullcontext(trace.INVALID_SPAN)
    found = remote_context(trace_context) if trace_context else None
    if found is not None and not found.trace_flags.sampled:
        return contextlib.nullcontext(trace.INVALID_SPAN)  # a sampler left the message out: its deliveries too
    kind = SpanKind.CLIENT if name == SPAN_DELIVERY else SpanKind.INTERNAL
    links: Sequence[trace.Link] = ()
    if found is not None and continued:
        context = trace.set_span_in_context(trace.NonRecordingSpan(found))
    else:
        context, links = _ROOT, [trace.Link(found)] if found is not None else ()
    made = _tracer.start_span(name, context=context, kind=kind, links=links, attributes=attributes, start_time=start_time)
    return tracing.current(made) if current else tracing.ending(made)


_ROOT = otel_context.Context()  # an empty context (never changed: contexts are copied to be set): no parent


def outcome(span: Span, statuses: set[str], reason: str = "") -> None:
    """ERROR (with error.type: deferred or failed) when not every recipient was delivered."""
    if not _on:
        return
    span.set_attribute("vsmtp.statuses", sorted(statuses))
    bad = sorted(statuses - {"delivered"})
    if bad:
        span.set_attribute("error.type", "failed" if "failed" in bad else bad[0])
        span.set_status(Status(StatusCode.ERROR, reason[:512]))


def failed(span: Span, error_type: str, reason: str) -> None:
    if _on:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, reason[:512]))


# -- DNS ------------------------------------------------------------------------------------


class TracedResolver(dns.asyncresolver.Resolver):
    """dnspython's resolver with a span per lookup (`dns A`, `dns MX` ...)."""

    async def resolve(self, qname: Any, rdtype: Any = "A", *args: Any, **kwargs: Any) -> Any:
        if not _on:
            return await super().resolve(qname, rdtype, *args, **kwargs)
        # NXDOMAIN and "no answer" are answers: the span is not an error for them.
        name, kind = f"dns {rdtype}", SpanKind.CLIENT
        with _tracer.start_as_current_span(name, kind=kind, record_exception=False, set_status_on_exception=False) as made:
            made.set_attribute("dns.question.name", str(qname))
            made.set_attribute("dns.question.type", str(rdtype))
            try:
                answer = await super().resolve(qname, rdtype, *args, **kwargs)
            except Exception as exc:
                made.set_attribute("dns.response.outcome", type(exc).__name__)
                raise
            made.set_attribute("dns.response.outcome", "answer")
            return answer
