"""The geo router: one OpenAI-compatible endpoint in front of every region."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
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
from geo_router.live.auth import ApiKey, KeyRing, key_digest_from, presents
from geo_router.live.breaker import CircuitBreaker
from geo_router.live.drain import Drain
from geo_router.live.errors import error_response
from geo_router.live.inference_path import InferencePath
from geo_router.live.locate import ClientLocator, open_geoip
from geo_router.live.metrics import RouterMetrics
from geo_router.live.middleware import EnvelopeMiddleware, request_id_of
from geo_router.live.prompt import BLOCK_CHARS, CHARS_PER_TOKEN, prefix_blocks, prompt_text
from geo_router.live.prompt_tokens import PromptTokens
from geo_router.live.proxy import Proxy, RelayResponse
from geo_router.live.ratelimit import KeyLimits, TokenBucket
from geo_router.live.regions import Region, RegionTable
from geo_router.live.requests import (
    InferenceRequest,
    InvalidRequest,
    completion_cap,
    parse_inference_request,
    read_capped_body,
    session_key,
)
from geo_router.live.supervised import supervise
from geo_router.live.tracing import router_tracer
from geo_router.live.upstream import AiohttpUpstream, HttpxUpstream, Upstream
from geo_router.live.usage import asks_for_usage, body_asking_for_usage
from geo_router.policy.scoring import RequestFacts, RoutingMemory, RttCorrector, choose
from meridian_core.contracts import RouterRegions
from meridian_core.geo import LatLon
from meridian_core.replica_model import PROFILES
from meridian_core.spec import PlatformSpec

log = logging.getLogger(__name__)


def create_app(
    spec: PlatformSpec, *, client: httpx.AsyncClient | None = None, span_processor: SpanProcessor | None = None
) -> FastAPI:
    """Build the router for `spec`; `client` replaces the HTTP client it reaches regions
    with, `span_processor` where its OpenTelemetry spans go (tests)."""
    settings = spec.router
    metrics = RouterMetrics()
    known_models = {m.id for m in spec.models}
    max_model_len = {m.id: m.max_model_len for m in spec.models}
    prompt_counter = PromptTokens(spec.models)
    locate = settings.locate
    locator = ClientLocator(
        locate.order,
        settings.default_location.latlon,
        geoip=open_geoip(locate.geoip_database) if locate.geoip_database else None,
        trusted_proxy_hops=locate.trusted_proxy_hops,
    )
    # Requests go through aiohttp (fast); health polls through httpx (rare). A client
    # passed in (tests: httpx.MockTransport fakes) carries both, and stays the caller's.
    owns_client = client is None
    upstream: Upstream = AiohttpUpstream() if client is None else HttpxUpstream(client)
    client = client or httpx.AsyncClient()
    table = RegionTable(
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
    for name in table.regions:  # exported at 0 from the start, so the first trip shows in increase()
        metrics.breaker_trips.labels(name)
    drain = Drain()
    proxy = Proxy(upstream, metrics, settings, drain)
    profiles = {r.name: PROFILES[r.profile] for r in spec.regions}
    memory = RoutingMemory()
    corrector = RttCorrector()
    tracer = router_tracer(span_processor)
    trace_context = TraceContextTextMapPropagator()
    keyring = KeyRing(
        [
            ApiKey(k.name, key_digest_from(k.sha256, k.key_env), k.requests_per_minute, k.tokens_per_minute)
            for k in settings.auth.keys
        ]
    )
    limits = {
        key.name: KeyLimits(
            TokenBucket(key.requests_per_minute) if key.requests_per_minute else None,
            TokenBucket(key.tokens_per_minute) if key.tokens_per_minute else None,
        )
        for key in keyring.keys
    }

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await table.poll_once()  # serve from the first request on, not after one interval
        poller = asyncio.create_task(
            supervise(
                "health_poll",
                lambda: table.poll_forever(settings.health_poll_interval_s),
                lambda task: metrics.background_failures.labels(task).inc(),
            )
        )
        try:
            yield
        finally:
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

    def request_facts(
        parsed: InferenceRequest, location: LatLon, session: str | None, prompt_tokens: int
    ) -> RequestFacts:
        text = prompt_text(parsed.fields)
        return RequestFacts(
            client=location,
            prompt_tokens=max(1, prompt_tokens),
            prefix_blocks=prefix_blocks(text),
            tokens_per_block=BLOCK_CHARS // CHARS_PER_TOKEN,
            session=session,
            cell=(round(location.lat), round(location.lon), parsed.model),
        )

    admin_token = os.environ.get(settings.auth.admin_token_env, "")

    def operator_only(request: Request) -> Response | None:
        """With API keys set, what the router says of itself (regions, metrics, its API)
        is for operators: the admin token, or a refusal."""
        if not keyring.enabled or presents(request.headers.get("authorization"), admin_token):
            return None
        if not admin_token:
            unset = settings.auth.admin_token_env
            return error_response(403, f"operational endpoints need the admin token, and {unset} is unset")
        return error_response(401, "this endpoint needs the router's admin token", code="invalid_api_key")

    def authenticate(request: Request) -> ApiKey | Response | None:
        """The caller's key, None when the router is open, or the 401 to answer with."""
        if not keyring.enabled:
            return None
        key = keyring.identify(request.headers.get("authorization"))
        if key is None:
            return error_response(
                401,
                "missing or invalid API key; send it as 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
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
            parsed = parse_inference_request(path, body)
            session = session_key(request.headers.get("x-session-id"), parsed.fields)
            location = locator.locate(request.headers, request.client.host if request.client else None).location
        except InvalidRequest as error:
            return error_response(error.status, error.message, param=error.param)
        # From here on the time is the regions' and the router's: a slow upload is not.
        started = time.perf_counter()
        request.scope["state"]["model"] = parsed.model
        if parsed.model not in known_models:  # before any quota is charged
            metrics.requests.labels("none", "unknown", "404").inc()
            return error_response(
                404,
                f"The model `{parsed.model}` does not exist. Available: {sorted(known_models)}",
                param="model",
                code="model_not_found",
            )
        prompt_tokens = await prompt_counter.count(parsed.model, parsed.fields)
        cap = completion_cap(path, parsed.fields, prompt_tokens, max_model_len[parsed.model])
        parsed = dataclasses.replace(parsed, completion_cap=cap)
        facts = request_facts(parsed, location, session, prompt_tokens)
        charged, on_usage = prompt_tokens + cap, None
        if key is not None:
            now = time.monotonic()
            key_limits = limits[key.name]
            wait_s = key_limits.admit(charged, now)
            if wait_s > 0:
                metrics.requests.labels("none", parsed.model, "429").inc()
                metrics.rate_limited.labels(key_limits.limiting(charged, now)).inc()
                if math.isinf(wait_s):
                    return error_response(
                        429,
                        f"this request may use up to {charged} tokens, more than key '{key.name}' may use in a "
                        "minute; set max_tokens lower",
                        code="rate_limit_exceeded",
                    )
                retry = str(math.ceil(wait_s))
                return error_response(
                    429,
                    f"rate limit of key '{key.name}' reached; retry in {retry} s",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": retry},
                )
            if key_limits.tokens is not None:  # charged ahead at the most it may use; settled on its usage

                def on_usage(used: int) -> None:
                    key_limits.settle(charged, used, time.monotonic())

        # A stream is settled on its usage too: asked for it, which the client that did not
        # ask never sees.
        hide_usage = on_usage is not None and parsed.stream and not asks_for_usage(parsed.fields)
        if hide_usage:
            parsed = dataclasses.replace(parsed, body=body_asking_for_usage(parsed.fields))

        candidates, panic = table.servable(parsed.model)
        decision = choose(
            [r.load(corrector.correction_for(r.name, time.monotonic()), parsed.model) for r in candidates],
            facts,
            memory,
            profiles,
            settings.scoring,
        )
        if decision is None:
            metrics.requests.labels("none", parsed.model, "503").inc()
            return error_response(
                503,
                f"no healthy region serves `{parsed.model}` right now",
                code="no_healthy_region",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        predicted_ms = {e.region: e.ttft_ms for e in decision.estimates}
        reason = "panic" if panic else decision.reason

        def learn(region: Region, ttfb_s: float) -> None:
            memory.remember(region.name, facts, decision)
            if parsed.stream:  # only a stream's first byte is its first token
                corrector.observe(region.name, predicted_ms[region.name], ttfb_s * 1000, time.monotonic())

        span.set_attributes({"meridian.model": parsed.model, "meridian.reason": reason})
        headers = {**request.headers, "x-request-id": request_id_of(request.scope)}
        trace_context.inject(headers, context=trace.set_span_in_context(span))  # W3C traceparent to the region
        ranked = [table.regions[name] for name in decision.ranked]
        ranked += table.reserve(parsed.model, decision.ranked, facts.client)

        def done(region: Region, outcome: str) -> None:
            span.set_attribute("meridian.region", region.name)
            end_span(span, outcome)

        return await proxy.forward(
            path, parsed, headers, ranked, started, reason, request.receive, learn, done, on_usage, hide_usage
        )

    app.add_middleware(InferencePath, handle=route, on_error=unexpected)
    app.add_middleware(EnvelopeMiddleware)  # added last: outermost of the two

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
        if model_id not in known_models:
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
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
