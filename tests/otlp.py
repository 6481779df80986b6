"""A real OTLP endpoint on loopback, for the telemetry tests: what arrives over gRPC (grpcio,
with the collector's service definitions) or over HTTP/protobuf (/v1/traces, /v1/metrics,
/v1/logs) is decoded with the official opentelemetry-proto messages and kept.

The OpenTelemetry Collector is not packaged for Debian; this endpoint receives what the
Collector's OTLP receiver would, from the same exporters, and lets a test read it.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: value(pair.value) for pair in pairs}


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    links: list[tuple[str, str]]  # (trace_id, span_id)
    status: int  # 0 unset, 1 ok, 2 error
    status_message: str
    resource: dict[str, Any]


@dataclass
class Point:
    name: str
    kind: str  # sum, gauge, histogram
    attributes: dict[str, Any]
    value: float
    resource: dict[str, Any]
    bounds: list[float] = field(default_factory=list)


@dataclass
class Received:
    spans: list[Span] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    logs: list[tuple[str, dict[str, Any], str, str]] = field(default_factory=list)  # (body, resource, trace_id, span_id)
    requests: dict[str, int] = field(default_factory=dict)  # per signal
    lock: threading.Lock = field(default_factory=threading.Lock)
    keep: bool = True  # False: count the spans (span_count) and keep nothing, as the bench's endpoint does
    span_count: int = 0

    def traces(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            self.requests["traces"] = self.requests.get("traces", 0) + 1
            self.span_count += sum(len(scope.spans) for resource_spans in request.resource_spans for scope in resource_spans.scope_spans)
            if not self.keep:
                return
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope in resource_spans.scope_spans:
                    for s in scope.spans:
                        self.spans.append(
                            Span(
                                name=s.name,
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_id=s.parent_span_id.hex(),
                                kind=s.kind,
                                attributes=attributes(s.attributes),
                                events=[(e.name, attributes(e.attributes)) for e in s.events],
                                links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                                status=s.status.code,
                                status_message=s.status.message,
                                resource=resource,
                            )
                        )

    def metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self.lock:
            self.requests["metrics"] = self.requests.get("metrics", 0) + 1
            if not self.keep:
                return
            for resource_metrics in request.resource_metrics:
                resource = attributes(resource_metrics.resource.attributes)
                for scope in resource_metrics.scope_metrics:
                    for m in scope.metrics:
                        kind = m.WhichOneof("data")
                        data = getattr(m, kind)
                        for p in data.data_points:
                            if kind == "histogram":
                                number, bounds = float(p.count), list(p.explicit_bounds)
                            else:
                                number, bounds = (p.as_double if p.WhichOneof("value") == "as_double" else float(p.as_int)), []
                            self.points.append(Point(m.name, kind, attributes(p.attributes), number, resource, bounds))

    def log_records(self, request: logs_service_pb2.ExportLogsServiceRequest) -> None:
        with self.lock:
            self.requests["logs"] = self.requests.get("logs", 0) + 1
            if not self.keep:
                return
            for resource_logs in request.resource_logs:
                resource = attributes(resource_logs.resource.attributes)
                for scope in resource_logs.scope_logs:
                    for r in scope.log_records:
                        self.logs.append((str(value(r.body)), resource, r.trace_id.hex(), r.span_id.hex()))

    def named(self, name: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.name == name]

    def latest(self, name: str) -> list[Point]:
        """The points of the last export of metric `name` from each process (cumulative)."""
        with self.lock:
            found: dict[tuple[str, tuple[tuple[str, str], ...]], Point] = {}
            for p in self.points:
                if p.name == name:
                    key = (str(p.resource.get("service.instance.id")), tuple(sorted((k, str(v)) for k, v in p.attributes.items())))
                    found[key] = p
            return list(found.values())


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        self.received.traces(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        self.received.metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        self.received.log_records(request)
        return logs_service_pb2.ExportLogsServiceResponse()


class GrpcEndpoint:
    def __init__(self, *, keep: bool = True) -> None:
        self.received = Received(keep=keep)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self.received), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self.received), self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self.received), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> GrpcEndpoint:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)


_DECODE: dict[str, tuple[Any, Callable[[Received, Any], None], Any]] = {
    "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest, Received.traces, trace_service_pb2.ExportTraceServiceResponse),
    "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest, Received.metrics, metrics_service_pb2.ExportMetricsServiceResponse),
    "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest, Received.log_records, logs_service_pb2.ExportLogsServiceResponse),
}


class HttpEndpoint:
    def __init__(self) -> None:
        self.received = received = Received()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                found = _DECODE.get(self.path)
                if found is None or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404 if found is None else 415)
                    return
                request_type, keep, response_type = found
                keep(received, request_type.FromString(body))
                answer = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HttpEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def serve_counting() -> None:
    """The bench's collector, in a process of its own (`python -m tests.otlp`): a gRPC endpoint
    that decodes what arrives and counts the spans, keeping nothing. It prints its endpoint,
    answers each line read from stdin with the spans received so far, and ends at stdin's end
    (its parent's exit closes it)."""
    import sys

    with GrpcEndpoint(keep=False) as endpoint:
        print(endpoint.endpoint, flush=True)
        for _ in sys.stdin:
            with endpoint.received.lock:
                print(endpoint.received.span_count, flush=True)


def wait_for(predicate: Callable[[], object], what: str, *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # bounded
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def ancestors(spans: list[Span], span: Span) -> Iterator[Span]:
    by_id = {s.span_id: s for s in spans}
    while span.parent_id and span.parent_id in by_id:
        span = by_id[span.parent_id]
        yield span


__all__ = ["GrpcEndpoint", "HttpEndpoint", "KeyValue", "Received", "Span", "ancestors", "wait_for"]


if __name__ == "__main__":
    serve_counting()
