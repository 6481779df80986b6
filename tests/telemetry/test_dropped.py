"""Spans the export thread cannot keep up with are dropped by the SDK's batch processor. With
the SDK's own metrics on (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED), the drops are counted
in vsmtp's metrics (otel.sdk.processor.span.processed, error.type queue_full)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExportResult

from vsmtp.config import TelemetryConfig
from vsmtp.telemetry import providers


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_spans_dropped_past_the_queue_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    exporting, release = threading.Event(), threading.Event()

    def stuck(self: ConsoleSpanExporter, spans: Any) -> SpanExportResult:
        exporting.set()
        release.wait(10)  # a collector that does not answer, or an export thread starved of the GIL
        return SpanExportResult.SUCCESS

    monkeypatch.setattr(ConsoleSpanExporter, "export", stuck)
    reader = InMemoryMetricReader()
    made = providers.build(TelemetryConfig(exporter="console"), process="receiver-1", readers=[reader], metrics_wanted=True)
    assert made.tracer is not None
    tracer = made.tracer.get_tracer("vsmtp")
    try:
        for _ in range(2):
            tracer.start_span("smtp.message").end()
        assert exporting.wait(10)  # the worker took those two and is stuck exporting them
        for _ in range(5):  # two fill the queue again, three do not fit
            tracer.start_span("smtp.message").end()
        dropped = [p for p in _points(reader, "otel.sdk.processor.span.processed") if p.attributes.get("error.type") == "queue_full"]
        assert [p.value for p in dropped] == [3]
    finally:
        release.set()
        made.shutdown()
