"""A lean tracer: OpenTelemetry API spans recorded with as little work as a span needs.

The SDK's span (opentelemetry-sdk) costs about 45 us of CPU to start and end here: a lock
and bounded containers per span, attribute values validated one by one, a read-only copy
made at the end, the sampler asked through several layers. A server that makes three spans
and a handful of events per message spent more on that than on many parts of the message.
These spans keep the same data in plain slots (about a tenth of the work and of the objects
for the garbage collector) and hand themselves, once ended, to the SDK's batch span
processor and OTLP exporters: the export path (batching, retries, headers, TLS, the
`OTEL_*` settings of the exporters) is the SDK's own, and what reaches a collector is the
same (encoding.py writes the request).

What is kept from the SDK's behaviour: sampling (`OTEL_TRACES_SAMPLER` and its argument,
read by the SDK; the default, parent-based always-on, is decided here without a call),
limits (128 attributes, events and links a span, as the SDK's defaults; the excess is
counted as dropped), exceptions recorded as `exception` events and the status set to ERROR
when a span's block raises, W3C trace context through the API's propagators.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace import propagation as trace_propagation
from opentelemetry.util import types

if TYPE_CHECKING:  # the SDK is imported when a tracer provider is made (providers.py), not before
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, sampling
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

LIMIT = 128  # attributes, events and links a span keeps (the SDK's default limits)
_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)
_NO_STATE = trace.DEFAULT_TRACE_STATE
_SPAN_KEY = trace_propagation._SPAN_KEY  # where a context keeps its current span (the API's key)


def _context(fields: tuple[int, int, bool, TraceFlags, TraceState, bool]) -> SpanContext:
    return tuple.__new__(SpanContext, fields)


_getrandbits = random.getrandbits  # as the SDK's id generator: ids unique, not secret


class Event:
    """A span event, with what the encoder and the console exporter read."""

    __slots__ = ("attributes", "dropped_attributes", "name", "timestamp")

    def __init__(self, name: str, attributes: Mapping[str, Any] | None, timestamp: int) -> None:
        self.name = name
        self.timestamp = timestamp
        self.attributes: Mapping[str, Any] = attributes or {}
        self.dropped_attributes = 0


class Span(trace.Span):
    """One span; ended, it goes to the processor (the SDK's batch span processor)."""

    __slots__ = (
        "_tracer",
        "attributes",
        "context",
        "dropped_attributes",
        "dropped_events",
        "dropped_links",
        "end_time",
        "events",
        "kind",
        "links",
        "name",
        "parent",
        "start_time",
        "status",
    )

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        span_context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Mapping[str, Any] | None,
        links: Sequence[Link],
        start_time: int | None,
    ) -> None:
        self._tracer = tracer
        self.name = name
        self.context = span_context
        self.parent = parent
        self.kind = kind
        self.attributes: dict[str, Any] = {}
        self.dropped_attributes = self.dropped_events = self.dropped_links = 0
        self.end_time: int | None = None
        if attributes:
            self.attributes = _kept(attributes)
            if len(self.attributes) > LIMIT:
                self.dropped_attributes = len(self.attributes) - LIMIT
                self.attributes = dict(itertools.islice(self.attributes.items(), LIMIT))
        self.events: list[Event] = []
        self.links: list[Link] = list(links[:LIMIT]) if links else []
        if links and len(links) > LIMIT:
            self.dropped_links = len(links) - LIMIT
        self.status = _UNSET
        self.start_time = start_time if start_time is not None else time.time_ns()

    # -- the API ----------------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self.end_time is not None or value is None:
            return
        if key in self.attributes or len(self.attributes) < LIMIT:
            self.attributes[key] = tuple(value) if isinstance(value, list) else value
        else:
            self.dropped_attributes += 1

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        if self.end_time is not None:
            return
        if len(self.attributes) + len(attributes) <= LIMIT:  # room for all: in one update
            self.attributes.update(_kept(attributes))
            return
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self.end_time is not None:
            return
        if len(self.events) >= LIMIT:
            self.dropped_events += 1
            return
        self.events.append(Event(name, attributes, timestamp if timestamp is not None else time.time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self.end_time is not None or not context.is_valid:
            return
        if len(self.links) >= LIMIT:
            self.dropped_links += 1
            return
        self.links.append(Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return  # OK is final (the API's rule)
        self.status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(
        self, exception: BaseException, attributes: types.Attributes = None, timestamp: int | None = None, escaped: bool = False
    ) -> None:
        recorded: dict[str, Any] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time if end_time is not None else time.time_ns()
        self._tracer.processor.on_end(self)  # type: ignore[arg-type]  # what the SDK's processors read, a ReadableSpan's shape

    # -- what the SDK's exporters read ------------------------------------------------------

    @property
    def resource(self) -> Resource:
        return self._tracer.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._tracer.scope

    def to_json(self, indent: int | None = 4) -> str:
        """As the SDK's ReadableSpan writes itself (the console exporter)."""
        return json.dumps(
            {
                "name": self.name,
                "context": {
                    "trace_id": f"0x{self.context.trace_id:032x}",
                    "span_id": f"0x{self.context.span_id:016x}",
                },
                "kind": str(self.kind),
                "parent_id": f"0x{self.parent.span_id:016x}" if self.parent else None,
                "start_time": self.start_time,
                "end_time": self.end_time,
                "status": {"status_code": self.status.status_code.name, "description": self.status.description},
                "attributes": dict(self.attributes),
                "events": [{"name": e.name, "timestamp": e.timestamp, "attributes": dict(e.attributes)} for e in self.events],
                "links": [{"context": {"trace_id": f"0x{link.context.trace_id:032x}"}} for link in self.links],
                "resource": {"attributes": dict(self.resource.attributes)},
            },
            indent=indent,
            default=str,
        ) + ("\n" if indent is not None else "")


def _kept(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """What a span keeps of attributes: no None, a list as a tuple (its value then cannot change)."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in attributes.items() if value is not None}


class _Current:
    """start_as_current_span's context manager: a class, not a generator (half the cost).
    With attach=False the span is not made the current one (see `ending`)."""

    __slots__ = ("_attach", "_end", "_record", "_set_status", "_span", "_token")

    def __init__(self, span: trace.Span, end: bool, record: bool, set_status: bool, attach: bool = True) -> None:
        self._span = span
        self._end = end
        self._record = record
        self._set_status = set_status
        self._attach = attach

    def __enter__(self) -> trace.Span:
        if self._attach:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is not None and self._span.is_recording():
                if self._record:
                    self._span.record_exception(exc, escaped=True)
                if self._set_status:
                    self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            if self._attach:
                otel_context.detach(self._token)
            if self._end:
                self._span.end()


def current(span: trace.Span) -> _Current:
    """A block that makes `span` the current span, ends it, and records what it raises (what
    start_as_current_span returns, for a span already started)."""
    return _Current(span, True, True, True)


def ending(span: trace.Span) -> _Current:
    """A block that ends `span` and records what it raises, as start_as_current_span's does,
    without making it the current span: for a span that has no children (no context to
    attach and detach)."""
    return _Current(span, True, True, True, attach=False)


class Tracer(trace.Tracer):
    def __init__(self, processor: SpanProcessor, resource: Resource, scope: InstrumentationScope, sampler: sampling.Sampler | None) -> None:
        self.processor = processor
        self.resource = resource
        self.scope = scope
        self.sampler = sampler  # None: parent-based always-on, decided here

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        found = (otel_context.get_current() if context is None else context).get(_SPAN_KEY)
        parent = found.get_span_context() if isinstance(found, trace.Span) else trace.INVALID_SPAN_CONTEXT
        valid = parent.is_valid
        trace_id = parent.trace_id if valid else _getrandbits(128) or 1
        if self.sampler is None:  # parent-based always-on: an unsampled parent's children are not recorded
            sampled = recording = parent.trace_flags.sampled if valid else True
            if sampled:  # the usual span: its context made without the API's checks (its ids are valid)
                state = parent.trace_state if valid else _NO_STATE
                return Span(
                    self,
                    name,
                    _context((trace_id, _getrandbits(64) or 1, False, _SAMPLED, state, True)),
                    parent if valid else None,
                    kind,
                    attributes,
                    links or (),
                    start_time,
                )
            trace_state = parent.trace_state if valid else None
        else:
            decision = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
            sampled = decision.decision.is_sampled()  # type: ignore[no-untyped-call]
            recording = decision.decision.is_recording()  # type: ignore[no-untyped-call]
            trace_state = decision.trace_state
            if decision.attributes:
                attributes = {**(attributes or {}), **decision.attributes}
        span_context = SpanContext(trace_id, _getrandbits(64) or 1, False, _SAMPLED if sampled else _NOT_SAMPLED, trace_state)
        if not recording:
            return trace.NonRecordingSpan(span_context)
        return Span(self, name, span_context, parent if valid else None, kind, attributes, links or (), start_time)

    def start_as_current_span(  # type: ignore[override]  # the API declares it a generator-based context manager
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> _Current:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        return _Current(span, end_on_exit, record_exception, set_status_on_exception)


class TracerProvider(trace.TracerProvider):
    """One processor (the SDK's BatchSpanProcessor with an OTLP or console exporter)."""

    def __init__(self, resource: Resource, processor: SpanProcessor) -> None:
        self.resource = resource
        self.processor = processor
        self._tracers: dict[tuple[str, str | None, str | None], Tracer] = {}
        self._lock = threading.Lock()
        if _default_sampling():
            self.sampler = None
        else:
            from opentelemetry.sdk.trace import sampling

            self.sampler = sampling._get_from_env_or_default()

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> Tracer:
        key = (instrumenting_module_name, instrumenting_library_version, schema_url)
        with self._lock:
            if key not in self._tracers:
                from opentelemetry.sdk.util.instrumentation import InstrumentationScope

                scope = InstrumentationScope(instrumenting_module_name, instrumenting_library_version, schema_url, attributes)
                self._tracers[key] = Tracer(self.processor, self.resource, scope, self.sampler)
            return self._tracers[key]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.processor.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self.processor.shutdown()


def _default_sampling() -> bool:
    chosen = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    return chosen in ("", "parentbased_always_on")
