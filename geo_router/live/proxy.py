"""Forward one inference request to the best region; fail over before the first byte.

The client's body goes to the region byte for byte. A streamed answer is relayed chunk
by chunk as it arrives (never buffered whole). Until the first byte of the answer has
been read from a region, any failure there moves the request to the next region;
after that the request is never sent twice, and a stream that breaks ends with an SSE
error event in OpenAI's shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from geo_router.live.errors import error_response, sse_error_event
from geo_router.live.metrics import RouterMetrics
from geo_router.live.middleware import REGION_HEADER
from geo_router.live.regions import Region
from geo_router.live.requests import InferenceRequest
from geo_router.live.upstream import Upstream, UpstreamError, UpstreamResponse

log = logging.getLogger(__name__)

# Request headers passed to the region; everything else (host, hop-by-hop, length) is not.
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "traceparent", "tracestate", "x-request-id")
FORWARDED_RESPONSE_HEADERS = ("content-type", "cache-control")


class RelayResponse(StreamingResponse):
    """A streamed answer whose clean-up runs once however it ends: relayed whole,
    broken, or the client gone before the first chunk was even sent (when the body
    generator never starts, so a `finally` inside it would never run)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]], **kwargs: Any):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


class RegionFailed(Exception):
    """An attempt failed before any byte reached the client; another region may serve it."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def is_retryable_status(status: int) -> bool:
    # 404 from a region means its app (route prefix) is gone: the router has already
    # checked the model name. 5xx is the region's fault, and so is a redirect (never
    # followed). Other 4xx are the client's.
    return 300 <= status < 400 or status == 404 or status == 408 or status >= 500


@dataclass
class Attempt:
    region: Region
    upstream: UpstreamResponse
    first_chunk: bytes


class Proxy:
    def __init__(self, upstream: Upstream, metrics: RouterMetrics, upstream_timeout_s: float):
        self._upstream = upstream
        self._metrics = metrics
        self._timeout_s = upstream_timeout_s

    async def forward(
        self,
        path: str,
        request: InferenceRequest,
        headers: dict[str, str],
        ranked: list[Region],
        started: float,
        reason: str,
        on_first_byte: Callable[[Region, float], None],
        on_done: Callable[[Region, str], None],
    ) -> Response:
        """Try `ranked` regions in order; answer from the first that produces a byte.

        `reason` is why the first region was chosen; `on_first_byte(region, seconds)`
        hears which region answered and how soon, `on_done(region, outcome)` when its
        last byte has been relayed (outcome: the HTTP status, or `stream_broken`).
        """
        forwarded = {k: v for k, v in headers.items() if k in FORWARDED_REQUEST_HEADERS}
        # The answer is relayed as it comes, with no Content-Encoding: it must come plain.
        forwarded["accept-encoding"] = "identity"
        failures: list[str] = []
        for position, region in enumerate(ranked):
            why = reason if position == 0 else "failover"
            try:
                attempt = await self._attempt(region, path, request, forwarded)
            except RegionFailed as failure:
                region.mark_down(failure.detail)
                self._metrics.upstream_errors.labels(region.name, failure.kind).inc()
                failures.append(f"{region.name}: {failure.detail}")
                log.warning("attempt on %s failed before first byte: %s", region.name, failure.detail)
                continue
            ttfb_s = time.perf_counter() - started
            region.mark_answered()
            self._metrics.decisions.labels(region.name, why).inc()
            self._metrics.ttfb.labels(region.name, request.model).observe(ttfb_s)
            on_first_byte(region, ttfb_s)
            return self._respond(attempt, request, started, on_done)
        return error_response(
            503,
            "no region could serve the request: " + "; ".join(failures),
            code="no_healthy_region",
            headers={"Retry-After": "1"},
        )

    async def _attempt(self, region: Region, path: str, request: InferenceRequest, headers: dict[str, str]) -> Attempt:
        self._enter(region)
        upstream: UpstreamResponse | None = None
        try:
            url, headers = f"{region.endpoint}/v1/{path}", {**headers, **region.auth_headers()}
            upstream = await self._upstream.post(url, request.body, headers, self._timeout_s)
            if is_retryable_status(upstream.status):
                body = await upstream.read(200)
                raise RegionFailed("status", f"HTTP {upstream.status}: {body!r}")
            first_chunk = b""
            async for chunk in upstream.chunks:
                if chunk:
                    first_chunk = chunk
                    break
            return Attempt(region, upstream, first_chunk)
        except BaseException as error:
            # Nothing reached the client: release the region; on success the relay does.
            if upstream is not None:
                await upstream.close()
            self._leave(region)
            if isinstance(error, UpstreamError):
                raise RegionFailed("connect", str(error)) from None
            raise

    def _enter(self, region: Region) -> None:
        region.in_flight += 1
        self._metrics.in_flight.labels(region.name).inc()

    def _leave(self, region: Region) -> None:
        region.in_flight -= 1
        self._metrics.in_flight.labels(region.name).dec()

    def _respond(
        self, attempt: Attempt, request: InferenceRequest, started: float, on_done: Callable[[Region, str], None]
    ) -> Response:
        region, upstream = attempt.region, attempt.upstream
        headers = {k.lower(): v for k, v in upstream.headers.items() if k.lower() in FORWARDED_RESPONSE_HEADERS}
        headers[REGION_HEADER] = region.name
        status = str(upstream.status)

        outcome = [status]  # what the relay ended with; read once the response is done

        async def finish() -> None:
            await upstream.close()
            self._leave(region)
            self._metrics.requests.labels(region.name, request.model, outcome[0]).inc()
            self._metrics.latency.labels(region.name, request.model).observe(time.perf_counter() - started)
            on_done(region, outcome[0])

        async def relay() -> AsyncIterator[bytes]:
            try:
                if attempt.first_chunk:
                    yield attempt.first_chunk
                async for chunk in upstream.chunks:
                    yield chunk
            except UpstreamError as error:
                outcome[0] = "stream_broken"
                self._metrics.upstream_errors.labels(region.name, "stream_broken").inc()
                log.warning("stream from %s broke after first byte: %s", region.name, error)
                if request.stream:
                    yield sse_error_event(502, f"the stream from region {region.name} broke: {error}", "stream_broken")

        return RelayResponse(relay(), finish, status_code=upstream.status, headers=headers)
