"""OpenTelemetry set-up, the names of vsmtp's spans, and its metrics.

With the exporter "none" (the default) vsmtp uses the API's no-op tracer and meter: near
zero cost. "console" prints finished spans as JSON on standard output, and the metrics
every minute.

Metrics (histograms, one record per journal commit):
- `vsmtp.journal.commit.duration` (s): from handing a batch to LMDB until the sync returned;
- `vsmtp.journal.commit.records`: records in that batch (group commit at work).
The session span carries the same two figures for the commit that made its (last) message durable
(`vsmtp.journal.commit_seconds`, `vsmtp.journal.batch_records`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from vsmtp_journal import Commit

from .config import TelemetryConfig

SPAN_SESSION = "smtp.session"  # one per SMTP connection
SPAN_DELIVERY = "smtp.delivery"  # one per remote delivery attempt, linked to the receiving session
SPAN_LOCAL = "local.delivery"  # one per message delivered into local mailboxes, linked the same way

METRIC_COMMIT_DURATION = "vsmtp.journal.commit.duration"
METRIC_COMMIT_RECORDS = "vsmtp.journal.commit.records"

_provider: trace.TracerProvider = trace.NoOpTracerProvider()
_meter_provider: MeterProvider | None = None
_meter: metrics.Meter = metrics.NoOpMeterProvider().get_meter("vsmtp")
_commit_duration = _meter.create_histogram(METRIC_COMMIT_DURATION, unit="s")
_commit_records = _meter.create_histogram(METRIC_COMMIT_RECORDS, unit="{record}")


def setup(config: TelemetryConfig, *, metric_readers: Sequence[MetricReader] | None = None) -> None:
    """Install the tracer and meter providers the configuration asks for (process-wide).
    `metric_readers` replaces the exporter's reader (tests pass an in-memory one)."""
    global _provider, _meter_provider, _meter, _commit_duration, _commit_records
    if metric_readers is None:
        console = config.exporter == "console"
        metric_readers = (
            [PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stdout), export_interval_millis=60_000)] if console else []
        )
    if _meter_provider is not None:
        _meter_provider.shutdown()  # stops its export thread; a last export happens now
    _meter_provider = MeterProvider(metric_readers=list(metric_readers)) if metric_readers else None
    _meter = _meter_provider.get_meter("vsmtp") if _meter_provider else metrics.NoOpMeterProvider().get_meter("vsmtp")
    _commit_duration = _meter.create_histogram(METRIC_COMMIT_DURATION, unit="s", description="journal commit latency")
    _commit_records = _meter.create_histogram(METRIC_COMMIT_RECORDS, unit="{record}", description="records per journal commit")
    if config.exporter == "console":
        provider = TracerProvider(resource=Resource.create({"service.name": "vsmtp"}))
        # sys.stdout as it is now, not as it was when the SDK was imported.
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
        _provider = provider
    else:
        _provider = trace.NoOpTracerProvider()


def tracer() -> trace.Tracer:
    return _provider.get_tracer("vsmtp")


def record_commit(records: int, seconds: float) -> None:
    _commit_duration.record(seconds)
    _commit_records.record(records)


def note_commit(commit: Commit | None) -> None:
    """On the current span: the figures of the journal commit that made its message durable."""
    if commit is not None:
        span = trace.get_current_span()
        span.set_attribute("vsmtp.journal.commit_seconds", commit.seconds)
        span.set_attribute("vsmtp.journal.batch_records", commit.records)


def enabled() -> bool:
    """Whether spans are recorded (so that work only a span needs can be skipped)."""
    return not isinstance(_provider, trace.NoOpTracerProvider)


def links_to(trace_context: Mapping[str, str]) -> list[trace.Link]:
    """A link to the span whose W3C context this is (a receiving session's, kept in
    message.accepted), or none."""
    if not trace_context:
        return []
    context = trace.get_current_span(propagate.extract(dict(trace_context))).get_span_context()
    return [trace.Link(context)] if context.is_valid else []


def current_context() -> dict[str, str]:
    """The W3C trace context of the current span, to keep with a message (message.accepted)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
