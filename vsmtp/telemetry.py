"""OpenTelemetry set-up and the names of vsmtp's spans.

With the exporter "none" (the default) vsmtp uses the API's no-op tracer: near zero cost.
"console" prints finished spans as JSON on standard output.
"""

from __future__ import annotations

import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from .config import TelemetryConfig

SPAN_SESSION = "smtp.session"  # one per SMTP connection

_provider: trace.TracerProvider = trace.NoOpTracerProvider()


def setup(config: TelemetryConfig) -> None:
    """Install the tracer provider the configuration asks for (process-wide)."""
    global _provider
    if config.exporter == "console":
        provider = TracerProvider(resource=Resource.create({"service.name": "vsmtp"}))
        # sys.stdout as it is now, not as it was when the SDK was imported.
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
        _provider = provider
    else:
        _provider = trace.NoOpTracerProvider()


def tracer() -> trace.Tracer:
    return _provider.get_tracer("vsmtp")
