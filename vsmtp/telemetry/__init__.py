"""OpenTelemetry throughout: traces, metrics and logs, exported over OTLP or to the console,
metrics served to Prometheus (docs/telemetry.md lists every span, attribute and metric).

- providers.py: the tracer, meter and logger providers of a process, its resource, the
  exporters (batched, in background threads, failures counted and logged once a minute);
- spans.py: span names and the helpers that open them where the work happens;
- tracing.py: the tracer those spans come from (the API's spans, recorded leanly, exported
  by the SDK's batch processor); encoding.py: the OTLP request, written as bytes;
- metrics.py: the instruments and what records them;
- snapshots.py, prometheus.py: one /metrics for all the processes of a server;
- logs.py: log lines with trace and span ids, as text or JSON.

With the exporter "none" and no Prometheus endpoint (the default) every helper is the API's
no-op: near zero cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..config import TelemetryConfig
from . import metrics, snapshots, spans
from .metrics import COMMIT_DURATION as METRIC_COMMIT_DURATION
from .metrics import COMMIT_RECORDS as METRIC_COMMIT_RECORDS
from .spans import (
    SPAN_COMMIT,
    SPAN_CONNECT,
    SPAN_DELIVERY,
    SPAN_LOCAL,
    SPAN_MESSAGE,
    SPAN_MX,
    SPAN_POSTQ,
    SPAN_SESSION,
    SPAN_TLS,
    SPAN_TRANSACTION,
    TracedResolver,
    current_context,
    enabled,
    span,
    tracer,
)

if TYPE_CHECKING:  # imported where they are used: prometheus_client where /metrics is served, the SDK where anything is on
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader

    from . import providers
    from .prometheus import Endpoint

__all__ = [
    "METRIC_COMMIT_DURATION",
    "METRIC_COMMIT_RECORDS",
    "SPAN_COMMIT",
    "SPAN_CONNECT",
    "SPAN_DELIVERY",
    "SPAN_LOCAL",
    "SPAN_MESSAGE",
    "SPAN_MX",
    "SPAN_POSTQ",
    "SPAN_SESSION",
    "SPAN_TLS",
    "SPAN_TRANSACTION",
    "TracedResolver",
    "current_context",
    "enabled",
    "metrics",
    "record_commit",
    "setup",
    "shutdown",
    "span",
    "tracer",
]

log = logging.getLogger("vsmtp.telemetry")

_installed: providers.Providers | None = None
_endpoint: Endpoint | None = None


def setup(
    config: TelemetryConfig,
    *,
    process: str = "all",
    metric_readers: Sequence[MetricReader] | None = None,
    journal_path: str = "",
    serve_prometheus: bool = True,
) -> None:
    """Install what `config` asks for in this process (replacing what was there, which is
    shut down first). `process`: "all" (everything in one process), "delivery", or
    "receiver-N"; a receiving process writes snapshots of its metrics for the Prometheus
    endpoint, which the process that delivers serves (`serve_prometheus`). `metric_readers`:
    more readers (tests pass an in-memory one)."""
    global _installed, _endpoint
    shutdown()
    readers = list(metric_readers or [])
    own: InMemoryMetricReader | None = None
    if config.exporter == "none" and not readers and not (config.prometheus and journal_path):
        return  # nothing to record: the API's no-ops, and the SDK not even imported
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader

    from . import providers

    if config.prometheus and journal_path:
        where = snapshots.directory(journal_path)
        if process.startswith("receiver"):
            exporter = providers.SnapshotExporter(where / f"{process}.json")
            readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=int(snapshots.SNAPSHOT_INTERVAL * 1000)))
        elif serve_prometheus:
            own = InMemoryMetricReader()
            readers.append(own)
    _installed = providers.build(config, process=process, readers=readers, metrics_wanted=bool(readers))
    spans.install(_installed.tracer)
    if _installed.meter is not None:
        metrics.install(_installed.meter.get_meter("vsmtp"))
        providers.FAILURES.on_failure = metrics.export_failed
    else:
        metrics.install(None)
    if own is not None:
        from .prometheus import Endpoint

        _endpoint = Endpoint(config.prometheus, own, snapshots.directory(journal_path))


def shutdown() -> None:
    """Flush and stop what setup() installed (the last spans and metrics are exported now)."""
    global _installed, _endpoint
    if _endpoint is not None:
        _endpoint.close()
        _endpoint = None
    installed, _installed = _installed, None
    if installed is not None:
        installed.shutdown()
    spans.install(None)
    metrics.install(None)


def record_commit(records: int, seconds: float) -> None:
    metrics.commit(records, seconds)


def watch_queue(state: Callable[[], Any], journal_path: str) -> None:
    metrics.watch_queue(state, journal_path)


def retire(journal_path: str, process: str) -> None:
    """The supervisor, when a receiving process has died (snapshots.py)."""
    snapshots.retire(snapshots.directory(journal_path), process)


def fresh_start(journal_path: str) -> None:
    snapshots.clear(snapshots.directory(journal_path))
