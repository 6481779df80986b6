"""The process's tracer, meter and logger providers, as the configuration asks for them.

Exports run in the SDK's background threads (batch span and log processors, a periodic
metric reader): never on the SMTP path. An exporter that fails (a collector down, a wrong
address) is wrapped by `_Guarded`: its failures are counted (`vsmtp.telemetry.export.failures`)
and logged at most once a minute, and the SDK exporters' own per-failure log lines are kept
at debug level.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, ConsoleLogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExportResult

from ..config import OtlpConfig, TelemetryConfig
from . import encoding, metrics, snapshots, tracing

log = logging.getLogger("vsmtp.telemetry")

FAILURE_LOG_INTERVAL = 60.0  # seconds between two log lines about failing exports
# The SDK's exporters log every failed export (with its retries): ours says it once a minute.
_QUIET = ("opentelemetry.exporter.otlp", "opentelemetry.sdk._shared_internal", "opentelemetry.sdk.trace.export")


def resource(process: str) -> Resource:
    """service.name "vsmtp" unless OTEL_SERVICE_NAME says otherwise; OTEL_RESOURCE_ATTRIBUTES
    are merged in by the SDK (ours win but for service.name)."""
    attributes: dict[str, Any] = {
        "service.version": _version(),
        "service.instance.id": str(uuid.uuid4()),  # one per process: a restarted receiver is a new instance
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
        "vsmtp.process": process,  # "all" (one process), "delivery", "receiver-1" ...
    }
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "vsmtp"
    made = Resource.create(attributes)
    return _Resource(made.attributes, made.schema_url)


class _Resource(Resource):
    """A Resource whose hash is computed once: the SDK's encoder groups every exported span
    by its resource, and Resource hashes by dumping its attributes to JSON each time."""

    def __init__(self, attributes: Any, schema_url: str | None = None) -> None:
        super().__init__(attributes, schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("vsmtp")
    except metadata.PackageNotFoundError:
        return "unknown"


def protocol(config: OtlpConfig) -> str:
    chosen = config.protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "") or "grpc"
    if chosen not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={chosen!r}: vsmtp speaks grpc and http/protobuf")
    return chosen


def _otlp_arguments(config: OtlpConfig, signal: str, proto: str) -> dict[str, Any]:
    """The exporter's arguments; what is not configured is left to OTEL_* and the SDK."""
    arguments: dict[str, Any] = {"timeout": config.timeout}
    if config.headers:
        arguments["headers"] = dict(config.headers)
    if proto == "grpc":
        if config.endpoint:
            arguments["endpoint"] = config.endpoint
            if config.insecure or config.endpoint.startswith("http://"):
                arguments["insecure"] = True
        if config.certificate:
            import grpc  # type: ignore[import-untyped]  # a dependency of the gRPC exporter

            with open(config.certificate, "rb") as file:
                arguments["credentials"] = grpc.ssl_channel_credentials(root_certificates=file.read())
    else:
        if config.endpoint:
            arguments["endpoint"] = config.endpoint.rstrip("/") + f"/v1/{signal}"
        if config.certificate:
            arguments["certificate_file"] = config.certificate
    return arguments


def exporters(config: OtlpConfig) -> tuple[Any, Any, Any]:
    """The OTLP span, metric and log exporters (gRPC or HTTP/protobuf)."""
    proto = protocol(config)
    if proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter  # type: ignore[assignment]
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # type: ignore[assignment]
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    return (
        _fast_span_exporter(OTLPSpanExporter, proto)(**_otlp_arguments(config, "traces", proto)),
        OTLPMetricExporter(**_otlp_arguments(config, "metrics", proto)),
        OTLPLogExporter(**_otlp_arguments(config, "logs", proto)),
    )


def _fast_span_exporter(base: type[Any], proto: str) -> type[Any]:
    """The SDK's span exporter with our encoder (encoding.py): the request is written as
    bytes in about a fifth of the time, and those bytes are what is sent, never parsed into
    a protobuf object to be serialized again. gRPC asks `_translate_data` for the request
    and sends it through a stub that passes bytes through; the HTTP exporter calls its
    module's `encode_spans` and then `SerializePartialToString()`, so that name is pointed at
    ours and gets an object that answers with the bytes."""
    if proto != "grpc":
        from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_traces

        http_traces.encode_spans = encoding.encoded_request  # type: ignore[attr-defined,assignment]
        return base

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    class Exporter(base):  # type: ignore[misc]
        def _initialize_channel_and_stub(self) -> None:  # at start, and again when the SDK reconnects
            super()._initialize_channel_and_stub()
            self._client = _Stub()
            self._client.Export = self._channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=bytes,  # already the request's wire form: bytes(b) is b itself
                response_deserializer=ExportTraceServiceResponse.FromString,
                _registered_method=True,
            )

        def _translate_data(self, data: Any) -> Any:
            return encoding.request_bytes(data)

    return Exporter


class _Stub:
    Export: Callable[..., Any]


class Failures:
    """Failed exports, counted per signal, logged at most once a minute."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._unlogged = 0
        self._logged_at = -FAILURE_LOG_INTERVAL
        self._lock = threading.Lock()
        self.on_failure: Callable[[str], None] = lambda signal: None  # the failures metric, once it exists

    def failed(self, signal: str, what: str) -> None:
        with self._lock:
            self.counts[signal] = self.counts.get(signal, 0) + 1
            self._unlogged += 1
            now = time.monotonic()
            if now - self._logged_at < FAILURE_LOG_INTERVAL:
                return
            count, self._unlogged, self._logged_at = self._unlogged, 0, now
        self.on_failure(signal)
        log.warning("telemetry: cannot export %s to %s (%d failed exports since the last report); mail goes on", signal, what, count)


FAILURES = Failures()


class _Guarded:
    """An exporter whose failures are counted and logged once a minute, never raised."""

    def __init__(self, exporter: Any, signal: str, what: str, failure: object) -> None:
        self._exporter = exporter
        self._signal = signal
        self._what = what
        self._failure = failure

    def export(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self._exporter.export(batch, *args, **kwargs)
        except Exception as exc:  # an exporter must not take its thread down
            log.debug("telemetry: %s export raised", self._signal, exc_info=exc)
            result = self._failure
        if result == self._failure:
            FAILURES.failed(self._signal, self._what)
        return result

    def __getattr__(self, name: str) -> Any:  # shutdown, force_flush, the metric exporter's preferences
        return getattr(self._exporter, name)


def _quiet_sdk_loggers(level: int) -> None:
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.CRITICAL)


class Providers:
    """What setup() installed in this process, to shut down (flushing what is pending)."""

    def __init__(self) -> None:
        self.tracer: tracing.TracerProvider | None = None
        self.meter: MeterProvider | None = None
        self.logger: LoggerProvider | None = None
        self.log_handler: logging.Handler | None = None

    def shutdown(self) -> None:
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
        for provider in (self.tracer, self.meter, self.logger):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception as exc:  # a collector down at the very end: nothing to lose sleep over
                    log.debug("telemetry: shutdown: %s", exc)


def build(config: TelemetryConfig, *, process: str, readers: Sequence[MetricReader], metrics_wanted: bool) -> Providers:
    """Providers for `config`: spans (and logs when asked) to the console or OTLP, metrics to
    the exporter and to `readers` (Prometheus, the per-process snapshot, a test's reader)."""
    made = Providers()
    if config.exporter == "none" and not metrics_wanted and not readers:
        return made
    res = resource(process)
    all_readers = list(readers)
    span_exporter = metric_exporter = log_exporter = None
    if config.exporter == "console":
        out = sys.stdout  # as it is now, not as it was when the SDK was imported
        span_exporter, metric_exporter = ConsoleSpanExporter(out=out), ConsoleMetricExporter(out=out)
        log_exporter = ConsoleLogRecordExporter(out=out)
        what = "the console"
    elif config.exporter == "otlp":
        span_exporter, metric_exporter, log_exporter = exporters(config.otlp)
        endpoint = config.otlp.endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "default")
        what = f"the OTLP endpoint ({protocol(config.otlp)} {endpoint})"
        _quiet_sdk_loggers(logging.getLogger("vsmtp").getEffectiveLevel())
    if metric_exporter is not None:
        guarded = _Guarded(metric_exporter, "metrics", what, MetricExportResult.FAILURE)
        interval = int(config.metric_interval * 1000)
        all_readers.append(PeriodicExportingMetricReader(guarded, export_interval_millis=interval))  # type: ignore[arg-type]
    if all_readers:
        made.meter = MeterProvider(metric_readers=all_readers, resource=res)
        for reader in all_readers:
            metrics.attach(reader, res)  # the histograms, kept outside the SDK (metrics.Buckets)
    if span_exporter is not None:
        # Given our meter, the SDK's own metrics (when OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
        # turns them on) go out with ours: what its queue drops when the export thread falls
        # behind is otel.sdk.processor.span.processed with error.type "queue_full".
        spans_out = _Guarded(span_exporter, "spans", what, SpanExportResult.FAILURE)
        processor = BatchSpanProcessor(spans_out, meter_provider=made.meter)  # type: ignore[arg-type]
        made.tracer = tracing.TracerProvider(res, processor)
    if log_exporter is not None and config.logs:
        made.logger = LoggerProvider(resource=res)
        made.logger.add_log_record_processor(
            BatchLogRecordProcessor(_Guarded(log_exporter, "logs", what, LogRecordExportResult.FAILURE), meter_provider=made.meter)  # type: ignore[arg-type]
        )
        made.log_handler = LoggingHandler(level=logging.INFO, logger_provider=made.logger)
        made.log_handler.addFilter(lambda record: not record.name.startswith("opentelemetry"))  # no export of the exporters' own woes
        logging.getLogger().addHandler(made.log_handler)
    return made


class SnapshotExporter(MetricExporter):
    """Writes this process's cumulative figures to its snapshot file at each export."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            snapshots.write(self.path, snapshots.of(metrics_data))
        except OSError as exc:
            log.warning("telemetry: cannot write the metric snapshot %s: %s", self.path, exc)
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass
