"""Our OTLP span encoder (vsmtp/telemetry/encoding.py) writes the request the SDK's encoder
builds: the same protobuf message, for any spans the SDK can make."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from vsmtp.telemetry import encoding, providers

scalars = st.one_of(
    st.text(max_size=20),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)
values = st.one_of(scalars, st.lists(st.text(max_size=8), max_size=3), st.lists(st.integers(-1000, 1000), max_size=3))
attribute_maps = st.dictionaries(st.text(min_size=1, max_size=12), values, max_size=5)
ids = st.integers(min_value=1, max_value=2**64 - 1)
contexts = st.builds(
    lambda trace_id, span_id, remote, state: SpanContext(
        trace_id, span_id, is_remote=remote, trace_flags=TraceFlags(1), trace_state=TraceState(state)
    ),
    st.integers(min_value=1, max_value=2**128 - 1),
    ids,
    st.booleans(),
    st.lists(st.tuples(st.sampled_from(["vendor", "other"]), st.sampled_from(["a1", "b-2"])), max_size=2, unique_by=lambda kv: kv[0]),
)
span_shapes = st.fixed_dictionaries(
    {
        "name": st.text(max_size=16),
        "kind": st.sampled_from(list(SpanKind)),
        "attributes": attribute_maps,
        "events": st.lists(st.tuples(st.text(max_size=8), attribute_maps), max_size=3),
        "links": st.lists(st.tuples(contexts, attribute_maps), max_size=2),
        "status": st.sampled_from([None, (StatusCode.OK, None), (StatusCode.ERROR, "it failed: ü")]),
        "parent": st.one_of(st.none(), contexts),
    }
)


def made(shapes: list[dict[str, Any]], provider: TracerProvider, exporter: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    exporter.clear()
    tracer = provider.get_tracer("vsmtp", "1.2", schema_url="https://opentelemetry.io/schemas/1.21.0")
    for shape in shapes:
        parent = trace.set_span_in_context(NonRecordingSpan(shape["parent"])) if shape["parent"] else None
        links = [Link(c, a) for c, a in shape["links"]]
        span = tracer.start_span(shape["name"], context=parent, kind=shape["kind"], links=links, attributes=shape["attributes"])
        for name, attributes in shape["events"]:
            span.add_event(name, attributes)
        if shape["status"] is not None:
            span.set_status(Status(*shape["status"]))
        span.end()
    return exporter.get_finished_spans()


def sdk_provider(limits: SpanLimits | None = None, resource: Resource | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(resource=resource or providers.resource("receiver-1"), span_limits=limits)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


PROVIDER, EXPORTER = sdk_provider()


@settings(max_examples=300, deadline=None)
@given(st.lists(span_shapes, min_size=1, max_size=4))
def test_the_same_request_as_the_sdk(shapes: list[dict[str, Any]]) -> None:
    spans = made(shapes, PROVIDER, EXPORTER)
    ours = ExportTraceServiceRequest.FromString(encoding.request_bytes(spans))
    assert ours == sdk_encode_spans(spans)


def test_dropped_counts_and_several_resources() -> None:
    """Limits that drop attributes, events and links; spans of two resources in one batch."""
    provider, exporter = sdk_provider(SpanLimits(max_span_attributes=1, max_events=1, max_links=1, max_event_attributes=1))
    shape = {
        "name": "smtp.session",
        "kind": SpanKind.SERVER,
        "attributes": {"a": 1, "b": 2, "c": 3},
        "events": [("MAIL", {"x": 1, "y": 2}), ("RCPT", {})],
        "links": [(SpanContext(1, 2, False), {}), (SpanContext(3, 4, False), {})],
        "status": None,
        "parent": None,
    }
    spans = list(made([shape], provider, exporter))
    assert spans[0].dropped_attributes == 2 and spans[0].dropped_events == 1 and spans[0].dropped_links == 1
    other, other_exporter = sdk_provider(resource=Resource.create({"service.name": "other"}))  # a second resource in the batch
    spans += made([shape], other, other_exporter)
    ours = ExportTraceServiceRequest.FromString(encoding.request_bytes(spans))
    assert len(ours.resource_spans) == 2
    assert ours == sdk_encode_spans(spans)
