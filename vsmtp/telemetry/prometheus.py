"""`[telemetry] prometheus = "host:port"`: /metrics for Prometheus to scrape, one endpoint for
the whole server, served by the process that delivers.

At each scrape it merges its own figures with the snapshots of the receiving processes
(snapshots.py) and writes them in Prometheus's text format (prometheus_client). OpenTelemetry
names become Prometheus names as the OpenTelemetry specification maps them: dots become
underscores, the unit a suffix (s: _seconds, By: _bytes; {message} and the like: none),
counters end in _total; attribute names become labels the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..config import parse_address
from ..errors import VsmtpError
from . import snapshots

log = logging.getLogger("vsmtp.telemetry")

_UNITS = {"s": "seconds", "By": "bytes", "ms": "milliseconds"}


def name_of(name: str, unit: str) -> str:
    base = name.replace(".", "_").replace("-", "_")
    suffix = _UNITS.get(unit, "")
    return f"{base}_{suffix}" if suffix and not base.endswith(suffix) else base


def _label(key: str) -> str:
    return key.replace(".", "_").replace("-", "_")


def families(snapshot: snapshots.Snapshot) -> Iterator[Metric]:
    for name, metric in sorted(snapshot["metrics"].items()):
        keys = sorted({k for p in metric["points"] for k in p["attributes"]})
        labels = [_label(k) for k in keys]
        prom = name_of(name, metric["unit"])
        kind, doc = metric["kind"], metric["description"] or name
        family: Any
        if kind == "counter":
            family = CounterMetricFamily(prom, doc, labels=labels)
        elif kind == "histogram":
            family = HistogramMetricFamily(prom, doc, labels=labels)
        else:
            family = GaugeMetricFamily(prom, doc, labels=labels)
        for point in metric["points"]:
            values = [str(point["attributes"].get(k, "")) for k in keys]
            if kind == "histogram":
                cumulative, buckets = 0, []
                for bound, count in zip([*point["bounds"], float("inf")], point["buckets"], strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else _le(bound), cumulative))
                family.add_metric(values, buckets=buckets, sum_value=point["sum"])
            else:
                family.add_metric(values, point["value"])
        yield family


def _le(bound: float) -> str:
    return repr(float(bound))


class _Merged(Collector):
    def __init__(self, own: Callable[[], snapshots.Snapshot], where: Path) -> None:
        self.own = own
        self.where = where

    def collect(self) -> Iterator[Metric]:
        try:
            merged = snapshots.merge([self.own(), *snapshots.others(self.where)])
        except Exception:  # a scrape must never take the process down
            log.exception("telemetry: cannot collect the metrics for Prometheus")
            return
        yield from families(merged)


class Endpoint:
    """The /metrics server (prometheus_client's, in a thread of its own)."""

    def __init__(self, address: str, reader: InMemoryMetricReader, where: Path) -> None:
        from prometheus_client import start_http_server

        host, port = parse_address(address)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(lambda: snapshots.of(reader.get_metrics_data()), where))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise VsmtpError(f"telemetry.prometheus {address}: cannot listen: {exc.strerror}") from exc
        self.port = self._server.server_port
        log.info("telemetry: Prometheus metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", self.port)

    def close(self) -> None:
        stopper = threading.Thread(target=self._server.shutdown, daemon=True)
        stopper.start()
        stopper.join(5)
        self._server.server_close()
