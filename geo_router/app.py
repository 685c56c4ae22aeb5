"""The geo router: one OpenAI-compatible endpoint in front of every region."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from geo_router.errors import error_response
from geo_router.geo import LatLon, parse_lat_lon
from geo_router.metrics import RouterMetrics
from geo_router.proxy import REGION_HEADER, Proxy
from geo_router.regions import Region, RegionTable
from geo_router.requests import InvalidRequest, parse_inference_request
from geo_router.selection import rank_regions
from meridian.spec import PlatformSpec

log = logging.getLogger(__name__)

LOCATION_HEADER = "x-client-location"


class RegionHeaderMiddleware:
    """Every response carries x-meridian-region: the region that answered, or `none`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_region(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                if not any(name == REGION_HEADER.encode() for name, _ in headers):
                    headers.append((REGION_HEADER.encode(), b"none"))
            await send(message)

        await self.app(scope, receive, send_with_region)


def create_app(spec: PlatformSpec, *, client: httpx.AsyncClient | None = None) -> FastAPI:
    """Build the router for `spec`; `client` replaces the HTTP client it reaches regions with."""
    settings = spec.router
    metrics = RouterMetrics()
    known_models = {m.id for m in spec.models}
    default_location = LatLon(settings.default_location.lat, settings.default_location.lon)
    client = client or httpx.AsyncClient(limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256))
    table = RegionTable(
        [Region(r.name, LatLon(r.location.lat, r.location.lon), spec.region_endpoint(r)) for r in spec.regions],
        client,
        timeout_s=settings.health_timeout_s,
    )
    proxy = Proxy(client, metrics, settings.upstream_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await table.poll_once()  # serve from the first request on, not after one interval
        poller = asyncio.create_task(table.poll_forever(settings.health_poll_interval_s))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await client.aclose()

    app = FastAPI(title="Meridian geo router", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.regions = table
    app.state.metrics = metrics
    app.add_middleware(RegionHeaderMiddleware)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, str(exc.errors()))

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected router error")
        return error_response(500, f"internal router error ({type(exc).__name__}); see the router log")

    def client_location(request: Request) -> LatLon:
        header = request.headers.get(LOCATION_HEADER)
        if header is None:
            return default_location
        try:
            return parse_lat_lon(header)
        except ValueError as error:
            raise InvalidRequest(f"X-Client-Location: {error}", param="X-Client-Location") from None

    async def route(request: Request, path: str) -> Response:
        started = time.perf_counter()
        try:
            parsed = parse_inference_request(path, await request.body())
            location = client_location(request)
        except InvalidRequest as error:
            return error_response(error.status, error.message, param=error.param)
        if parsed.model not in known_models:
            metrics.requests.labels("none", "unknown", "404").inc()
            return error_response(
                404,
                f"The model `{parsed.model}` does not exist. Available: {sorted(known_models)}",
                param="model",
                code="model_not_found",
            )
        ranked_states = rank_regions(location, table.states(), parsed.model)
        if not ranked_states:
            metrics.requests.labels("none", parsed.model, "503").inc()
            return error_response(
                503,
                f"no healthy region serves `{parsed.model}` right now",
                code="no_healthy_region",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        ranked = [table.regions[s.name] for s in ranked_states]
        return await proxy.forward(path, parsed, dict(request.headers), ranked, started)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await route(request, "chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await route(request, "completions")

    @app.get("/v1/models")
    async def models() -> dict:
        serving = {m for r in table.regions.values() if r.healthy for m in r.models}
        return {
            "object": "list",
            "data": [
                {"id": m.id, "object": "model", "created": 0, "owned_by": "meridian", "ready": m.id in serving}
                for m in spec.models
            ],
        }

    @app.get("/healthz")
    async def healthz() -> dict:
        # The router's own liveness: it answers even when no region is healthy.
        healthy = [r.name for r in table.regions.values() if r.healthy]
        return {"status": "ok" if healthy else "degraded", "healthy_regions": healthy}

    @app.get("/regions")
    async def regions() -> dict:
        return {"regions": [r.describe() for r in table.regions.values()]}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        for region in table.regions.values():
            metrics.region_healthy.labels(region.name).set(1 if region.healthy else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
