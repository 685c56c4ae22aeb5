"""OpenTelemetry for the router: a server span per request, W3C trace context in and out.

Spans are exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces
variant) is set, the OpenTelemetry convention. Otherwise the router makes no spans, a
tenth of its CPU per request, and passes a client's trace context on to the region as
it came, like any proxy that is not traced.

The compiled front records the spans of the requests it serves, ids included (it sent
them to the regions); `export_front_span` exports each through the same tracer.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, Tracer
from opentelemetry.trace.span import TraceState

SERVICE_NAME = "meridian-router"
# A span the front recorded: (name, trace id, span id, parent span id, sampled,
# tracestate, start ns, end ns, attributes, HTTP status, error).
FrontSpan = tuple[str, str, str, str | None, bool, str | None, int, int, list[tuple[str, str]], int, str | None]


class GivenIds(RandomIdGenerator):
    """Random ids, except for the next span when it already has its own (the front's)."""

    def __init__(self) -> None:
        self.given: tuple[int, int] | None = None

    def generate_trace_id(self) -> int:
        return self.given[0] if self.given is not None else super().generate_trace_id()

    def generate_span_id(self) -> int:
        if self.given is None:
            return super().generate_span_id()
        span_id, self.given = self.given[1], None
        return span_id


def router_tracer(processor: SpanProcessor | None = None) -> Tracer | None:
    """The router's tracer, its spans going to `processor` (tests) or the OTLP exporter;
    None when nothing would receive them."""
    if processor is None:
        if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        processor = BatchSpanProcessor(OTLPSpanExporter())
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}), id_generator=GivenIds())
    provider.add_span_processor(processor)
    return provider.get_tracer("geo_router")


def export_front_span(tracer: Tracer, span: FrontSpan) -> None:
    """Export a span the front recorded, as the router's own server span: its ids, its
    times, its caller's span as its parent."""
    name, trace_id, span_id, parent_id, parent_flags, tracestate, start_ns, end_ns, attributes, status, error = span
    context = None
    if parent_id is not None:
        parent = SpanContext(
            int(trace_id, 16),
            int(parent_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(parent_flags),
            trace_state=TraceState.from_header([tracestate]) if tracestate else None,
        )
        context = trace.set_span_in_context(NonRecordingSpan(parent))
    tracer.id_generator.given = (int(trace_id, 16), int(span_id, 16))  # type: ignore[attr-defined]
    started = tracer.start_span(
        name, context=context, kind=SpanKind.SERVER, attributes=dict(attributes), start_time=start_ns
    )
    started.set_attribute("http.response.status_code", status)
    if error is not None:
        started.set_status(Status(StatusCode.ERROR, error))
    started.end(end_time=end_ns)
