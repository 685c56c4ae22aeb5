"""OpenTelemetry for the router: a server span per request, W3C trace context in and out.

Spans are exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces
variant) is set, the OpenTelemetry convention. Otherwise the router makes no spans, a
tenth of its CPU per request, and passes a client's trace context on to the region as
it came, like any proxy that is not traced.
"""

from __future__ import annotations

import os

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer

SERVICE_NAME = "meridian-router"


def router_tracer(processor: SpanProcessor | None = None) -> Tracer | None:
    """The router's tracer, its spans going to `processor` (tests) or the OTLP exporter;
    None when nothing would receive them."""
    if processor is None:
        if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(processor)
    return provider.get_tracer("geo_router")
