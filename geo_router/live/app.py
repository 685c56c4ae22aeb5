"""The geo router: one OpenAI-compatible endpoint in front of every region."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from geo_router.live import openapi
from geo_router.live.admission import Admission
from geo_router.live.auth import ApiKey, presents
from geo_router.live.breaker import CircuitBreaker
from geo_router.live.drain import Drain
from geo_router.live.errors import error_response
from geo_router.live.front import (
    Front,
    FrontEvents,
    FrontPeer,
    FrontView,
    front_config,
    start_front,
    write_front_records,
    write_front_records_once,
)
from geo_router.live.inference_path import InferencePath
from geo_router.live.metrics import RouterMetrics, WithSamples
from geo_router.live.middleware import EnvelopeMiddleware, request_id_of
from geo_router.live.proxy import Proxy, RelayResponse
from geo_router.live.regions import Region, RegionTable
from geo_router.live.requests import (
    InvalidRequest,
    read_capped_body,
)
from geo_router.live.supervised import supervise
from geo_router.live.tracing import router_tracer
from geo_router.live.upstream import AiohttpUpstream, HttpxUpstream, Upstream, region_tls
from geo_router.policy.scoring import RoutingMemory, RttCorrector
from meridian_core.contracts import RouterRegions
from meridian_core.spec import PlatformSpec

log = logging.getLogger(__name__)


def create_app(
    spec: PlatformSpec,
    *,
    client: httpx.AsyncClient | None = None,
    span_processor: SpanProcessor | None = None,
    back_port: int | None = None,
) -> FastAPI:
    """Build the router for `spec`; `client` replaces the HTTP client it reaches regions
    with, `span_processor` where its OpenTelemetry spans go (tests). With `back_port`, the
    port this app is served on, on loopback, the compiled front takes the router's port
    (geo_router/live/front.py)."""
    settings = spec.router
    metrics = RouterMetrics()
    # Requests go through aiohttp (fast); health polls through httpx (rare). A client
    # passed in (tests: httpx.MockTransport fakes) carries both, and stays the caller's.
    owns_client = client is None
    tls = region_tls(settings.region_ca_file)
    upstream: Upstream = AiohttpUpstream(tls) if client is None else HttpxUpstream(client)
    client = client or httpx.AsyncClient(verify=tls)
    table = region_table(spec, client, metrics)
    for name in table.regions:  # exported at 0 from the start, so the first trip shows in increase()
        metrics.breaker_trips.labels(name)
    drain = Drain()
    proxy = Proxy(upstream, metrics, settings, drain)
    memory = RoutingMemory()
    admission = Admission(spec, table, metrics, memory, RttCorrector())
    tracer = router_tracer(span_processor)
    trace_context = TraceContextTextMapPropagator()
    front_view = FrontView(table)
    exported = WithSamples(metrics.registry, lambda: [])

    def count_failure(task: str) -> None:
        metrics.background_failures.labels(task).inc()

    def start_compiled_front(back: int) -> tuple[Front, asyncio.Task]:
        config = front_config(spec, back, table, admission, traced=tracer is not None)
        loop = asyncio.get_running_loop()
        events = FrontEvents(table, front_view, admission.prompt_counter, admission.locator, loop)
        front = start_front(config, events, memory, admission.corrector, admission.limits)
        for region in table.regions.values():
            region.on_change = front_view.push
            region.in_flight_elsewhere = functools.partial(front.in_flight, region.name)
        drain.on_start(front.drain)
        exported.extra = front.metric_samples
        writer = asyncio.create_task(
            supervise("front_records", lambda: write_front_records(front, tracer, count_dropped), count_failure)
        )
        return front, writer

    def count_dropped(kind: str, count: int) -> None:
        metrics.front_dropped.labels(kind).inc(count)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await table.poll_once()  # serve from the first request on, not after one interval
        poller = asyncio.create_task(
            supervise("health_poll", lambda: table.poll_forever(settings.health_poll_interval_s), count_failure)
        )
        front, writer = start_compiled_front(back_port) if back_port is not None else (None, None)
        try:
            yield
        finally:
            if front is not None and writer is not None:
                drain.start(settings.shutdown_grace_s)  # the front drains whatever stops this app
                if not await asyncio.to_thread(front.wait_idle, settings.shutdown_grace_s):
                    log.warning("answers the compiled front relayed were still open at the end of the grace")
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
                write_front_records_once(front, tracer, count_dropped)  # the last answers' lines and spans
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await table.aclose()
            if owns_client:  # a client passed in belongs to the caller
                await client.aclose()
                await upstream.aclose()

    app = FastAPI(title="Meridian geo router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.regions = table
    app.state.memory = memory
    app.state.drain = drain
    app.state.metrics = metrics

    def unexpected(error: Exception) -> JSONResponse:
        log.exception("unexpected router error")
        return error_response(500, f"internal router error ({type(error).__name__}); see the router log")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, str(exc.errors()))

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        return unexpected(exc)

    admin_token = os.environ.get(settings.auth.admin_token_env, "")

    def operator_only(request: Request) -> Response | None:
        """With API keys set, what the router says of itself (regions, metrics, its API)
        is for operators: the admin token, or a refusal."""
        if not admission.keyring.enabled or presents(request.headers.get("authorization"), admin_token):
            return None
        if not admin_token:
            unset = settings.auth.admin_token_env
            return error_response(403, f"operational endpoints need the admin token, and {unset} is unset")
        return error_response(401, "this endpoint needs the router's admin token", code="invalid_api_key")

    def authenticate(request: Request) -> ApiKey | Response | None:
        """The caller's key, None when the router is open, or the 401 to answer with."""
        key = admission.authenticate(request.headers.get("authorization"))
        if isinstance(key, ApiKey):
            request.scope["state"]["key"] = key.name
        return key

    async def route(request: Request, path: str) -> Response:
        """Serve one inference request inside a server span that lasts until its last byte."""
        span = (
            INVALID_SPAN  # untraced: the client's trace context goes on as it came
            if tracer is None
            else tracer.start_span(
                f"POST /v1/{path}",
                context=trace_context.extract(request.headers),
                kind=SpanKind.SERVER,
                attributes={"http.request.method": "POST", "url.path": f"/v1/{path}"},
            )
        )
        span.set_attribute("meridian.request_id", request_id_of(request.scope))
        streaming = False
        try:
            response = await dispatch(request, path, span)
            streaming = isinstance(response, RelayResponse)
            if not streaming and span.is_recording():  # unless the proxy has ended it already
                end_span(span, response.status_code)
            return response
        finally:
            if not streaming and span.is_recording():
                span.end()

    def end_span(span: Span, status: int | str) -> None:
        span.set_attribute("http.response.status_code", int(status) if str(status).isdigit() else 502)
        if not str(status).startswith("2"):
            span.set_status(Status(StatusCode.ERROR, str(status)))
        span.end()

    async def dispatch(request: Request, path: str, span: Span) -> Response:
        key = authenticate(request)
        if isinstance(key, Response):
            return key
        try:
            body = await read_capped_body(
                request.stream(), request.headers.get("content-length"), settings.max_body_bytes
            )
            parsed, session, location = admission.parse(
                path, body, request.headers, request.client.host if request.client else None
            )
        except InvalidRequest as error:
            return error_response(error.status, error.message, param=error.param)
        # From here on the time is the regions' and the router's: a slow upload is not.
        started = time.perf_counter()
        request.scope["state"]["model"] = parsed.model
        admitted = await admission.admit(path, parsed, session, location, key)
        if isinstance(admitted, Response):
            return admitted
        span.set_attributes({"meridian.model": parsed.model, "meridian.reason": admitted.reason})
        headers = {**request.headers, "x-request-id": request_id_of(request.scope)}
        trace_context.inject(headers, context=trace.set_span_in_context(span))  # W3C traceparent to the region

        def learn(region: Region, ttfb_s: float) -> None:
            admission.learn(admitted, region, ttfb_s)

        def done(region: Region, outcome: str) -> None:
            span.set_attribute("meridian.region", region.name)
            end_span(span, outcome)

        return await proxy.forward(
            path,
            admitted.request,
            headers,
            admitted.ranked,
            started,
            admitted.reason,
            request.receive,
            learn,
            done,
            admitted.on_usage,
            admitted.hide_usage,
        )

    app.add_middleware(InferencePath, handle=route, on_error=unexpected)
    app.add_middleware(EnvelopeMiddleware)  # outermost but one
    if back_port is not None:
        app.add_middleware(FrontPeer)  # added last: outermost

    # Served by InferencePath before FastAPI routes anything; declared here for the OpenAPI document.
    @app.post("/v1/chat/completions", openapi_extra=openapi.CHAT_COMPLETIONS)
    async def chat_completions(request: Request) -> Response:
        return await route(request, "chat/completions")

    @app.post("/v1/completions", openapi_extra=openapi.COMPLETIONS)
    async def completions(request: Request) -> Response:
        return await route(request, "completions")

    @app.post("/v1/embeddings", openapi_extra=openapi.EMBEDDINGS)
    async def embeddings(request: Request) -> Response:
        return await route(request, "embeddings")

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        key = authenticate(request)
        if isinstance(key, Response):
            return key
        return error_response(
            404,
            "the Responses API is not served by this platform's router; use /v1/chat/completions",
            code="unsupported_endpoint",
        )

    def model_card(model_id: str, serving: set[str]) -> dict:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "meridian", "ready": model_id in serving}

    def serving_models() -> set[str]:
        return {m for r in table.regions.values() if r.healthy for m in r.models}

    @app.get("/v1/models", response_model=None)
    async def models(request: Request) -> dict | Response:
        key = authenticate(request)
        if isinstance(key, Response):
            return key
        serving = serving_models()
        return {"object": "list", "data": [model_card(m.id, serving) for m in spec.models]}

    @app.get("/v1/models/{model_id:path}", response_model=None)
    async def model(request: Request, model_id: str) -> dict | Response:
        key = authenticate(request)
        if isinstance(key, Response):
            return key
        if model_id not in admission.known_models:
            return error_response(
                404, f"The model `{model_id[:256]}` does not exist", param="model", code="model_not_found"
            )
        return model_card(model_id, serving_models())

    @app.get("/healthz", response_model=None)
    async def healthz() -> dict | Response:
        # The router's own liveness: it answers even when no region is healthy, and
        # fails only when its view of the regions has stopped being refreshed.
        healthy = [r.name for r in table.regions.values() if r.healthy]
        if drain.draining:
            return JSONResponse({"status": "shutting_down", "healthy_regions": healthy}, status_code=503)
        if table.poll_is_stale(time.monotonic()):
            return JSONResponse({"status": "stale", "healthy_regions": healthy}, status_code=503)
        return {"status": "ok" if healthy else "degraded", "healthy_regions": healthy}

    @app.get("/openapi.json", include_in_schema=False, response_model=None)
    async def openapi_document(request: Request) -> dict | Response:
        return operator_only(request) or app.openapi()

    @app.get("/regions", response_model=None)
    async def regions(request: Request) -> dict | Response:
        if refusal := operator_only(request):
            return refusal
        return RouterRegions(regions=[r.describe() for r in table.regions.values()]).model_dump(mode="json")

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        if refusal := operator_only(request):
            return refusal
        for region in table.regions.values():
            metrics.region_healthy.labels(region.name).set(1 if region.healthy else 0)
            metrics.breaker_open.labels(region.name).set(1 if region.breaker.is_open else 0)
        return Response(generate_latest(exported), media_type=CONTENT_TYPE_LATEST)  # type: ignore[arg-type]

    return app


def region_table(spec: PlatformSpec, client: httpx.AsyncClient, metrics: RouterMetrics) -> RegionTable:
    """Every region of `spec`, polled through `client`, its failures counted in `metrics`."""
    settings = spec.router
    return RegionTable(
        [
            Region(
                r.name,
                r.location.latlon,
                spec.region_endpoint(r),
                CircuitBreaker(
                    settings.breaker_failure_threshold, settings.breaker_open_s, settings.breaker_max_open_s
                ),
                token=os.environ.get(r.token_env),
                on_breaker_trip=lambda name: metrics.breaker_trips.labels(name).inc(),
            )
            for r in spec.regions
        ],
        client,
        timeout_s=settings.health_timeout_s,
        interval_s=settings.health_poll_interval_s,
        on_malformed=lambda error: metrics.malformed.labels(contract=error.contract).inc(),
        on_poll_error=lambda _: metrics.background_failures.labels("status_poll").inc(),
        probe_models=[m.id for m in spec.models if m.task == "generate"],  # a probe is a completion
        probe_timeout_s=settings.first_byte_timeout_s,
    )
