"""The telemetry's parts on their own: the documentation lists every span and metric, a bad
setting is refused naming its line, snapshots add up and survive a dead process, log lines
carry their trace, `vsmtp trace` prints the link."""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from vsmtp import config as config_mod
from vsmtp.errors import ConfigError
from vsmtp.telemetry import logs as telemetry_logs
from vsmtp.telemetry import metrics, snapshots, spans
from vsmtp.telemetry.prometheus import families, name_of

DOC = (Path(__file__).parents[2] / "docs" / "telemetry.md").read_text()


def test_the_documentation_lists_every_span_and_metric() -> None:
    names = [v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and v.startswith("vsmtp.")]
    names += [v for k, v in vars(spans).items() if k.startswith("SPAN_")]
    assert len(names) > 25
    missing = [name for name in names if f"`{name}`" not in DOC]
    assert not missing, missing


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[telemetry]\nprometheus = "9465"\n', "telemetry.prometheus"),
        ('[telemetry]\ntrace_url = "https://t.example/"\n', "telemetry.trace_url"),
        ('[telemetry]\nexporter = "jaeger"\n', "telemetry.exporter"),
        ('[telemetry.otlp]\nprotocol = "thrift"\n', "telemetry.otlp.protocol"),
    ],
)
def test_a_bad_setting_is_refused_with_its_line(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "vsmtp.toml"
    path.write_text("# telemetry\n" + text)
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path)
    assert key in str(caught.value) and ", line " in str(caught.value)


def _snapshot(accepted: float, active: float, buckets: list[int]) -> snapshots.Snapshot:
    return {
        "metrics": {
            metrics.ACCEPTED: {
                "kind": "counter",
                "unit": "{message}",
                "description": "",
                "points": [{"attributes": {"vsmtp.listener": "mx"}, "value": accepted}],
            },
            metrics.SESSIONS_ACTIVE: {
                "kind": "updown",
                "unit": "{session}",
                "description": "",
                "points": [{"attributes": {}, "value": active}],
            },
            metrics.TIME_TO_250: {
                "kind": "histogram",
                "unit": "s",
                "description": "",
                "points": [{"attributes": {}, "count": sum(buckets), "sum": 0.5, "bounds": [0.1, 1.0], "buckets": buckets}],
            },
        }
    }


def test_snapshots_add_up_and_a_dead_process_leaves_its_counters(tmp_path: Path) -> None:
    snapshots.write(tmp_path / "receiver-1.json", _snapshot(3, 2, [1, 2, 0]))
    snapshots.write(tmp_path / "receiver-2.json", _snapshot(4, 1, [0, 3, 1]))
    merged = snapshots.merge(snapshots.others(tmp_path))
    assert merged["metrics"][metrics.ACCEPTED]["points"][0]["value"] == 7
    assert merged["metrics"][metrics.SESSIONS_ACTIVE]["points"][0]["value"] == 3
    assert merged["metrics"][metrics.TIME_TO_250]["points"][0]["buckets"] == [1, 5, 1]
    snapshots.retire(tmp_path, "receiver-1")  # it died; its successor starts from zero
    snapshots.write(tmp_path / "receiver-1.json", _snapshot(1, 1, [1, 0, 0]))
    merged = snapshots.merge(snapshots.others(tmp_path))
    assert merged["metrics"][metrics.ACCEPTED]["points"][0]["value"] == 8  # 3 + 4 + 1: never down
    assert merged["metrics"][metrics.SESSIONS_ACTIVE]["points"][0]["value"] == 2  # the dead one's sessions are gone
    text = "\n".join(f"{f.name} {f.type} {[(s.name, s.labels, s.value) for s in f.samples]}" for f in families(merged))
    assert "vsmtp_messages_accepted counter [('vsmtp_messages_accepted_total', {'vsmtp_listener': 'mx'}, 8" in text
    assert "('vsmtp_smtp_accept_duration_seconds_bucket', {'le': '1.0'}, 7" in text  # cumulative
    assert name_of("vsmtp.journal.free", "By") == "vsmtp_journal_free_bytes"


def test_log_lines_carry_the_trace_they_are_written_in() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(telemetry_logs._TraceIds("receiver-1"))
    handler.setFormatter(telemetry_logs.JsonFormatter())
    logger = logging.getLogger("vsmtp.test.telemetry")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        tracer = TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("s") as span:
            logger.warning("inside %s", "a span")
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert inside["message"] == "inside a span" and inside["process"] == "receiver-1"
    assert inside["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert "trace_id" not in outside


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.0001, 0.001, 0.0025, 0.3, 5.0, 30.0, 31.0]) | st.floats(0, 100), min_size=1, max_size=40))
def test_the_lean_histogram_counts_as_the_sdk_does(values: list[float]) -> None:
    """metrics.Buckets against the SDK's explicit-bucket histogram with the same bounds: the
    same buckets (a value on a bound goes below it), count, sum, min and max."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        views=[View(instrument_name="h", aggregation=ExplicitBucketHistogramAggregation(list(metrics.BUCKETS[metrics.TIME_TO_250])))],
    )
    sdk = provider.get_meter("t").create_histogram("h")
    ours = metrics.Buckets(metrics.TIME_TO_250, "s", "")
    for value in values:
        sdk.record(value, {"k": "v"})
        ours.record(value, (("k", "v"),))
    [expected] = reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    made = ours.metric()
    assert made is not None
    [point] = made.data.data_points
    assert list(point.bucket_counts) == list(expected.bucket_counts)
    assert (point.count, point.min, point.max, point.attributes) == (expected.count, expected.min, expected.max, expected.attributes)
    assert point.sum == pytest.approx(expected.sum)
    provider.shutdown()


def test_the_lean_histogram_loses_no_record_across_threads() -> None:
    ours = metrics.Buckets(metrics.DELIVERY_LATENCY, "s", "")
    workers = [threading.Thread(target=lambda: [ours.record(0.5, (("t", "x"),)) for _ in range(5000)]) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    made = ours.metric()
    assert made is not None and made.data.data_points[0].count == 20000 and made.data.data_points[0].sum == 10000


def test_every_reader_gets_the_histograms_beside_the_meters_instruments() -> None:
    reader, resource = InMemoryMetricReader(), Resource({"service.name": "vsmtp"})
    provider = MeterProvider(metric_readers=[reader], resource=resource)
    metrics.attach(reader, resource)
    provider.get_meter("vsmtp").create_counter("c").add(1)
    before = metrics.HISTOGRAMS[metrics.COMMIT_RECORDS].metric()
    metrics.HISTOGRAMS[metrics.COMMIT_RECORDS].record(7)
    [resource_metrics] = reader.get_metrics_data().resource_metrics
    [scope] = resource_metrics.scope_metrics  # the histograms join the meter's scope, not a second one
    found = {m.name: m for m in scope.metrics}
    assert "c" in found and scope.scope.name == "vsmtp"
    records = found[metrics.COMMIT_RECORDS].data.data_points[0]
    assert records.count == (before.data.data_points[0].count if before else 0) + 1
    assert found[metrics.COMMIT_RECORDS].data.aggregation_temporality == AggregationTemporality.CUMULATIVE
    provider.shutdown()
