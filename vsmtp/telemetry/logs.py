"""Log lines: each one written inside a span carries its trace_id and span_id, so that a log
line leads to its trace and back; `log_format = "json"` writes one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time

from opentelemetry import trace

TEXT = "%(asctime)s %(levelname)s %(process_name)s%(name)s: %(message)s%(trace)s"


class _TraceIds(logging.Filter):
    """Adds `trace` (" trace_id=... span_id=..." or ""), the ids, and the process's name."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            trace_id, span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
            ids = f" trace_id={trace_id} span_id={span_id}"
        else:
            trace_id = span_id = ids = ""
        record.trace_id, record.span_id, record.trace = trace_id, span_id, ids
        record.process_name = f"{self.process} " if self.process else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "process_name", ""):
            line["process"] = record.process_name.strip()  # type: ignore[attr-defined]
        if getattr(record, "trace_id", ""):
            line["trace_id"], line["span_id"] = record.trace_id, record.span_id  # type: ignore[attr-defined]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str | int, *, process: str = "", form: str = "text") -> None:
    """The root logger's handler on standard error, as `vsmtp serve` and its receiving
    processes write their log (replacing what basicConfig may have set)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_TraceIds(process))
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if type(old) is logging.StreamHandler:  # basicConfig's; not a test's capture
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
