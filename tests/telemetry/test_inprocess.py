"""In one process: spans on the console exporter, metrics in an in-memory reader."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from vsmtp import telemetry
from vsmtp.config import Config, TelemetryConfig

from ..conftest import sendmail, wait_delivered


async def test_console_exporter_prints_a_session_span(start_server: Any, config: Config, capfd: pytest.CaptureFixture[str]) -> None:
    running = await start_server(dataclasses.replace(config, telemetry=TelemetryConfig(exporter="console")))
    out = ""
    try:
        await sendmail(running, "a@example.org", ["bob@localhost"], "Subject: x\r\n\r\nx\r\n")
        await wait_delivered(running, 1)
        with trio.fail_after(5):  # the span is exported when the session has fully closed
            while telemetry.SPAN_SESSION not in out:
                await trio.sleep(0.01)
                out += capfd.readouterr().out
    finally:
        running.cancel_scope.cancel()
        telemetry.setup(TelemetryConfig())  # back to the no-op tracer for other tests
    spans = [json.loads(chunk) for chunk in _json_objects(out)]
    sessions = [s for s in spans if s["name"] == telemetry.SPAN_SESSION]
    assert len(sessions) == 1
    assert sessions[0]["attributes"]["client.address"] == "127.0.0.1"
    assert sessions[0]["attributes"]["vsmtp.close_reason"] == "quit"
    [message] = [s for s in spans if s["name"] == telemetry.SPAN_MESSAGE]
    assert message["parent_id"] == sessions[0]["context"]["span_id"]
    assert message["attributes"]["vsmtp.journal.batch_records"] >= 1  # the commit that made the message durable
    assert 0 < message["attributes"]["vsmtp.journal.commit_seconds"] < 10


async def test_a_local_delivery_that_fails_has_an_error_span(
    start_server: Any, config: Config, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local.delivery span says what became of the delivery in the end: its Maildir cannot
    be made (a file stands where a directory should be), so it is deferred, and the span is
    an ERROR with error.type "deferred" (spans of a batch are made once it is written)."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    delivery = dataclasses.replace(config.delivery, maildir=str(blocker / "{user}" / "Maildir"))
    running = await start_server(dataclasses.replace(config, telemetry=TelemetryConfig(exporter="console"), delivery=delivery))
    out = ""
    try:
        await sendmail(running, "a@example.org", ["bob@localhost"], "Subject: x\r\n\r\nx\r\n")
        with trio.fail_after(10):
            while telemetry.SPAN_LOCAL not in out:
                await trio.sleep(0.01)
                out += capfd.readouterr().out
    finally:
        running.cancel_scope.cancel()
        telemetry.setup(TelemetryConfig())
    local = next(span for span in map(json.loads, _json_objects(out)) if span["name"] == telemetry.SPAN_LOCAL)
    assert local["status"]["status_code"] == "ERROR"
    assert local["attributes"]["error.type"] == "deferred" and local["attributes"]["vsmtp.statuses"] == ["deferred"]
    assert local["attributes"]["vsmtp.recipients"] == 1 and local["start_time"] < local["end_time"]


async def test_journal_commits_are_measured_as_metrics(start_server: Any, config: Config) -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    running = await start_server(config)
    telemetry.setup(config.telemetry, metric_readers=[reader])  # commits from now on are recorded here
    try:
        for n in range(3):
            await sendmail(running, "a@example.org", ["bob@localhost"], f"Subject: {n}\r\n\r\nx\r\n")
        await wait_delivered(running, 3)
        running.cancel_scope.cancel()
        data = reader.get_metrics_data()
    finally:
        telemetry.setup(TelemetryConfig())
    assert data is not None
    points = {
        metric.name: metric.data.data_points[0]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    records = points[telemetry.METRIC_COMMIT_RECORDS]
    duration = points[telemetry.METRIC_COMMIT_DURATION]
    assert records.count == duration.count >= 3  # at least one commit per durable message
    assert records.sum >= 3 * 6  # every record committed: opened, helo, mail, rcpt, accepted, data (x3) and more
    assert 0 < duration.sum < 30


def _json_objects(text: str) -> list[str]:
    """Split the console exporter's concatenated pretty-printed JSON objects."""
    objects, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "{":
            depth, start = depth + 1, i if depth == 0 else start
        elif c == "}":
            depth -= 1
            if depth == 0:
                objects.append(text[start : i + 1])
    return objects


def test_no_exporter_means_the_no_op_tracer() -> None:
    telemetry.setup(TelemetryConfig(exporter="none"))
    with telemetry.tracer().start_as_current_span("x") as span:
        assert not span.is_recording()
