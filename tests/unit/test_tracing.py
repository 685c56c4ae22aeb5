"""One OpenTelemetry server span per request, continuing the caller's W3C trace and
handed on to the region in `traceparent`."""

from __future__ import annotations

from contextlib import contextmanager

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.testclient import TestClient

from geo_router.live.app import create_app
from meridian_core.spec import load_spec

from .fake_regions import CHAT, FakeRegions

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


@contextmanager
def traced_router(repo, fakes):
    exporter = InMemorySpanExporter()
    client = httpx.AsyncClient(transport=httpx.MockTransport(fakes.handle))
    app = create_app(
        load_spec(repo / "configs" / "local.yaml"), client=client, span_processor=SimpleSpanProcessor(exporter)
    )
    with TestClient(app, raise_server_exceptions=False) as router:
        yield router, exporter


@pytest.mark.parametrize("stream", [False, True])
def test_span_continues_the_callers_trace_and_reaches_the_region(repo, stream):
    fakes = FakeRegions()
    with traced_router(repo, fakes) as (router, exporter):
        response = router.post(
            "/v1/chat/completions", json={**CHAT, "stream": stream}, headers={"traceparent": TRACEPARENT}
        )
        assert response.status_code == 200
        (span,) = exporter.get_finished_spans()  # ended only once the body was relayed
    assert span.kind == SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == CALLER_SPAN
    assert span.attributes["meridian.region"] == "local/us-east"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["meridian.request_id"] == response.headers["x-request-id"]
    sent = fakes["local-us-east"].headers[-1]["traceparent"]
    assert sent == f"00-{TRACE_ID}-{format(span.context.span_id, '016x')}-01"


def test_rejected_requests_get_an_error_span_and_a_fresh_trace(repo):
    with traced_router(repo, FakeRegions()) as (router, exporter):
        assert router.post("/v1/chat/completions", json={**CHAT, "model": "nope"}).status_code == 404
        (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["http.response.status_code"] == 404
    assert span.parent is None


def test_with_nowhere_to_send_spans_the_router_makes_none_and_passes_the_callers_context_on(repo, monkeypatch):
    for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(variable, raising=False)
    fakes = FakeRegions()
    client = httpx.AsyncClient(transport=httpx.MockTransport(fakes.handle))
    with TestClient(create_app(load_spec(repo / "configs" / "local.yaml"), client=client)) as router:
        traced = router.post("/v1/chat/completions", json=CHAT, headers={"traceparent": TRACEPARENT})
        untraced = router.post("/v1/chat/completions", json=CHAT)
    assert traced.status_code == untraced.status_code == 200
    first, second = fakes["local-us-east"].headers[-2:]
    assert first["traceparent"] == TRACEPARENT
    assert "traceparent" not in second
