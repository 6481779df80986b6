"""The lean tracer (vsmtp/telemetry/tracing.py): spans as the OpenTelemetry API defines
them, with the SDK's sampling, limits and exception handling, exported by the SDK's
processors and encoded (encoding.py) into what a collector decodes."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opentelemetry import propagate, trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, StatusCode

from vsmtp.telemetry import encoding, providers, spans, tracing


def lean(monkeypatch: pytest.MonkeyPatch | None = None, sampler: str = "", arg: str = "") -> tuple[trace.Tracer, InMemorySpanExporter]:
    if monkeypatch is not None and sampler:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
        if arg:
            monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    exporter = InMemorySpanExporter()
    provider = tracing.TracerProvider(providers.resource("receiver-1"), SimpleSpanProcessor(exporter))
    return provider.get_tracer("vsmtp"), exporter


def decoded(exporter: InMemorySpanExporter) -> list:
    request = ExportTraceServiceRequest.FromString(encoding.request_bytes(exporter.get_finished_spans()))
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_a_child_a_link_attributes_and_events_reach_the_wire() -> None:
    tracer, exporter = lean()
    with tracer.start_as_current_span("smtp.session", kind=SpanKind.SERVER, attributes={"client.port": 2525}) as session:
        session.add_event("MAIL", {"smtp.reply.code": 250})
        with tracer.start_as_current_span("smtp.message", links=[Link(session.get_span_context(), {"vsmtp.link": "session"})]) as message:
            message.set_attribute("vsmtp.statuses", ["delivered", "deferred"])
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
    child, parent = decoded(exporter)
    assert (parent.name, child.name) == ("smtp.session", "smtp.message")
    assert child.trace_id == parent.trace_id and child.parent_span_id == parent.span_id and not parent.parent_span_id
    assert parent.kind == 2 and child.kind == 1  # SERVER, INTERNAL
    assert [(e.name, e.attributes[0].value.int_value) for e in parent.events] == [("MAIL", 250)]
    assert parent.attributes[0].key == "client.port" and parent.attributes[0].value.int_value == 2525
    assert [v.string_value for v in child.attributes[0].value.array_value.values] == ["delivered", "deferred"]
    assert child.links[0].span_id == parent.span_id and child.links[0].attributes[0].value.string_value == "session"
    assert carrier["traceparent"] == f"00-{child.trace_id.hex()}-{child.span_id.hex()}-01"
    assert parent.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano <= parent.end_time_unix_nano


def test_limits_count_what_they_drop() -> None:
    tracer, exporter = lean()
    span = tracer.start_span("smtp.session")
    for n in range(tracing.LIMIT + 3):
        span.set_attribute(f"a{n}", n)
        span.add_event(f"e{n}")
    span.set_attribute("a0", "replaced")  # a key already there is replaced, not dropped
    span.end()
    (wire,) = decoded(exporter)
    assert len(wire.attributes) == tracing.LIMIT and wire.dropped_attributes_count == 3
    assert len(wire.events) == tracing.LIMIT and wire.dropped_events_count == 3
    assert wire.attributes[0].value.string_value == "replaced"


def test_an_exception_is_an_event_and_an_error() -> None:
    tracer, exporter = lean()
    with pytest.raises(ValueError), tracer.start_as_current_span("postq"):
        raise ValueError("no such mailbox")
    with pytest.raises(KeyError), tracer.start_as_current_span("dns MX", record_exception=False, set_status_on_exception=False):
        raise KeyError("x")
    quiet, raised = decoded(exporter)[::-1]
    assert raised.status.code == 2 and raised.status.message == "ValueError: no such mailbox"
    (event,) = raised.events
    fields = {a.key: a.value.string_value for a in event.attributes}
    assert event.name == "exception" and fields["exception.type"] == "ValueError" and "no such mailbox" in fields["exception.stacktrace"]
    assert quiet.status.code == 0 and not quiet.events


def test_ok_is_final_and_an_ended_span_is_read_only() -> None:
    tracer, exporter = lean()
    span = tracer.start_span("smtp.delivery")
    span.set_status(StatusCode.OK)
    span.set_status(StatusCode.ERROR, "too late")
    span.end()
    span.set_attribute("after", 1)
    span.add_event("after")
    span.end()  # twice: exported once
    (wire,) = decoded(exporter)
    assert wire.status.code == 1 and not wire.attributes and not wire.events
    assert not span.is_recording()


def test_the_sdk_samplers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer, exporter = lean(monkeypatch, "always_off")
    with tracer.start_as_current_span("smtp.message") as span:
        assert not span.is_recording() and not span.get_span_context().trace_flags.sampled
    assert exporter.get_finished_spans() == ()

    tracer, exporter = lean(monkeypatch, "parentbased_traceidratio", "0")
    with tracer.start_as_current_span("smtp.message") as root:
        assert not root.get_span_context().trace_flags.sampled
    remote = propagate.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    with tracer.start_as_current_span("smtp.message", context=remote) as child:
        assert child.is_recording() and child.get_span_context().trace_flags.sampled  # the parent decided
    (wire,) = decoded(exporter)
    assert wire.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c" and wire.parent_span_id.hex() == "b7ad6b7169203331"
    assert wire.flags == 0x300  # the parent is remote


def test_an_unsampled_parent_makes_unsampled_children() -> None:
    tracer, exporter = lean()
    remote = propagate.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"})
    with tracer.start_as_current_span("smtp.message", context=remote) as child:
        assert not child.get_span_context().trace_flags.sampled and not child.is_recording()
    assert exporter.get_finished_spans() == ()  # the processor exports sampled spans only


def test_the_console_form() -> None:
    tracer, exporter = lean()
    with tracer.start_as_current_span("smtp.session", attributes={"vsmtp.listener": "smtp"}) as span:
        span.add_event("EHLO", {"smtp.reply.code": 250})
    (made,) = exporter.get_finished_spans()
    shown = json.loads(made.to_json())  # type: ignore[attr-defined]
    assert shown["name"] == "smtp.session" and shown["attributes"] == {"vsmtp.listener": "smtp"}
    assert shown["events"][0]["name"] == "EHLO" and shown["resource"]["attributes"]["service.name"] == "vsmtp"


def test_the_trace_context_kept_with_a_message_is_w3c_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    tracer, _ = lean()
    monkeypatch.setattr(spans, "_on", True)
    w3c = TraceContextTextMapPropagator()
    for header in ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"):
        carrier = {"traceparent": header, "tracestate": "vendor=a,other=b"}
        ours, theirs = spans.remote_context(carrier), trace.get_current_span(w3c.extract(carrier)).get_span_context()
        assert ours == theirs and ours is not None and ours.trace_state.to_header() == "vendor=a,other=b"
        with tracer.start_as_current_span("x", context=trace.set_span_in_context(trace.NonRecordingSpan(ours))) as made:
            written, expected = spans.current_context(made), {}
            w3c.inject(expected)
        assert written == expected and written["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    for bad in (
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is invalid
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # version 00 has four parts
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",  # short trace id
        "00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01",  # not hex
        "",
    ):
        assert spans.remote_context({"traceparent": bad}) is None, bad
        assert not trace.get_current_span(w3c.extract({"traceparent": bad})).get_span_context().is_valid, bad
    assert spans.remote_context({"traceparent": "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future"}) is not None


def _hex(size: int) -> st.SearchStrategy[str]:
    """Mostly well-formed lowercase hex of `size` digits; sometimes one digit short or long,
    in capitals, zero or not hex."""
    good = st.text("0123456789abcdef", min_size=size, max_size=size)
    return good | good.map(str.upper) | st.just("0" * size) | st.text("0123456789abcdefxAB", min_size=size - 1, max_size=size + 1)


@settings(max_examples=500, deadline=None)
@given(
    version=st.sampled_from(["00", "00", "01", "ff", "0g", "0"]),
    trace_id=_hex(32),
    span_id=_hex(16),
    flags=_hex(2),
    tail=st.sampled_from(["", "", "-", "-future", " "]),
    state=st.sampled_from([None, None, "", "vendor=a", "a=1,b=2", "bad state"]),
)
@example(version="00", trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331", flags="01", tail="", state=None)
@example(version="00", trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331", flags="00", tail="", state="a=1")
def test_reading_a_carrier_agrees_with_the_sdk(version: str, trace_id: str, span_id: str, flags: str, tail: str, state: str | None) -> None:
    """remote_context reads version 00 itself: whatever the carrier, its answer is the SDK
    propagator's, and writing it back gives what the propagator writes."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    w3c = TraceContextTextMapPropagator()
    carrier = {"traceparent": f"{version}-{trace_id}-{span_id}-{flags}{tail}"}
    if state is not None:
        carrier["tracestate"] = state
    theirs = trace.get_current_span(w3c.extract(carrier)).get_span_context()
    ours = spans.remote_context(carrier)
    assert ours == (theirs if theirs.is_valid else None)
    if ours is not None:
        assert ours.trace_flags == theirs.trace_flags and ours.trace_state.to_header() == theirs.trace_state.to_header()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(spans, "_on", True)
            written, expected = spans.current_context(trace.NonRecordingSpan(ours)), {}
        w3c.inject(expected, context=trace.set_span_in_context(trace.NonRecordingSpan(ours)))
        assert written == expected and written


def test_a_leaf_span_is_a_child_of_the_current_one_and_records_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer, exporter = lean()
    monkeypatch.setattr(spans, "_on", True)
    monkeypatch.setattr(spans, "_tracer", tracer)
    with tracer.start_as_current_span("smtp.message") as parent:
        with spans.leaf("journal.commit") as commit:
            assert trace.get_current_span() is parent  # never made the current span
        with pytest.raises(OSError), spans.leaf("journal.commit"):
            raise OSError("disk full")
    ok, failed, _ = exporter.get_finished_spans()
    assert ok is commit and ok.parent is not None and ok.parent.span_id == parent.get_span_context().span_id
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR and "disk full" in (failed.status.description or "")
    assert [e.name for e in failed.events] == ["exception"]
