"""Metric snapshots: how the receiving processes hand their figures to the one that serves
Prometheus, so that /metrics shows the server as a whole.

Each receiving process writes its cumulative figures every SNAPSHOT_INTERVAL seconds (and
once more when it stops) to `<journal>/metrics/<process>.json`, replacing the file
atomically. The process that serves /metrics merges them with its own at each scrape:
counters and histograms add up, as do the gauges a receiving process keeps (sessions open).
When a receiving process dies, the supervisor retires its file: its counters and histograms
are added to `retired.json`, so that a restarted process starting again from zero never
makes a counter go down. What a dead process counted after its last snapshot is lost (at
most SNAPSHOT_INTERVAL seconds of its figures).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricsData

log = logging.getLogger("vsmtp.telemetry")

SNAPSHOT_INTERVAL = 2.0  # seconds
RETIRED = "retired"
_LASTING = ("counter", "histogram")  # what a dead process leaves behind

Snapshot = dict[str, Any]  # {"metrics": {name: {"kind", "unit", "description", "points": [...]}}}


def directory(journal_path: str) -> Path:
    return Path(journal_path) / "metrics"


def of(data: MetricsData | None) -> Snapshot:
    """The SDK's collected metrics as plain data."""
    from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

    found: dict[str, Any] = {}
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points: list[dict[str, Any]] = []
                kind = "gauge"
                if isinstance(metric.data, Sum):
                    kind = "counter" if metric.data.is_monotonic else "updown"
                elif isinstance(metric.data, Histogram):
                    kind = "histogram"
                elif not isinstance(metric.data, Gauge):
                    continue  # exponential histograms: vsmtp makes none
                for point in metric.data.data_points:
                    attributes = dict(point.attributes or {})
                    if kind == "histogram":
                        points.append(
                            {
                                "attributes": attributes,
                                "count": point.count,  # type: ignore[union-attr]
                                "sum": point.sum,  # type: ignore[union-attr]
                                "bounds": list(point.explicit_bounds),  # type: ignore[union-attr]
                                "buckets": list(point.bucket_counts),  # type: ignore[union-attr]
                            }
                        )
                    else:
                        points.append({"attributes": attributes, "value": point.value})  # type: ignore[union-attr]
                found[metric.name] = {"kind": kind, "unit": metric.unit or "", "description": metric.description or "", "points": points}
    return {"metrics": found}


def merge(snapshots: Iterable[Snapshot], *, lasting_only: bool = False) -> Snapshot:
    """Their sum: points with the same name and attributes add up."""
    merged: dict[str, Any] = {}
    for snapshot in snapshots:
        for name, metric in snapshot.get("metrics", {}).items():
            if lasting_only and metric["kind"] not in _LASTING:
                continue
            into = merged.setdefault(name, {**metric, "points": []})
            by_key = {_key(p["attributes"]): p for p in into["points"]}
            for point in metric["points"]:
                same = by_key.get(_key(point["attributes"]))
                if same is None:
                    copy = json.loads(json.dumps(point))
                    into["points"].append(copy)
                    by_key[_key(point["attributes"])] = copy
                elif "buckets" in point and same.get("bounds") == point["bounds"]:
                    same["count"] += point["count"]
                    same["sum"] += point["sum"]
                    same["buckets"] = [a + b for a, b in zip(same["buckets"], point["buckets"], strict=True)]
                elif "value" in point:
                    same["value"] += point["value"]
    return {"metrics": merged}


def _key(attributes: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in attributes.items()))


def read(path: Path) -> Snapshot:
    try:
        data: Snapshot = json.loads(path.read_text())
        return data
    except FileNotFoundError:
        return {"metrics": {}}
    except (OSError, ValueError) as exc:
        log.warning("telemetry: cannot read the metric snapshot %s: %s", path, exc)
        return {"metrics": {}}


def write(path: Path, snapshot: Snapshot) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(snapshot))
    os.replace(temporary, path)


def others(where: Path, *, exclude: Sequence[str] = ()) -> list[Snapshot]:
    """Every snapshot in `where` (the retired figures included) but those named in `exclude`."""
    if not where.is_dir():
        return []
    return [read(path) for path in sorted(where.glob("*.json")) if path.stem not in exclude]


def retire(where: Path, process: str) -> None:
    """A receiving process has died: keep what its counters and histograms reached."""
    path = where / f"{process}.json"
    if not path.exists():
        return
    write(where / f"{RETIRED}.json", merge([read(where / f"{RETIRED}.json"), read(path)], lasting_only=True))
    path.unlink(missing_ok=True)


def clear(where: Path) -> None:
    """A new start: the figures of a previous run are not this run's (Prometheus sees a reset)."""
    if where.is_dir():
        for path in where.glob("*.json"):
            path.unlink(missing_ok=True)
