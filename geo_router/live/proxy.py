"""Forward one inference request to the best region; fail over before the first byte.

The client's body goes to the region byte for byte. A streamed answer is relayed chunk
by chunk as it arrives (never buffered whole). Until the first byte of the answer has
been read from a region, a failure there moves the request to the next region, within
the fleet's retry budget; after that the request is never sent twice, and a stream
that breaks ends with an SSE error event in OpenAI's shape.

A region that cannot be reached, has lost its app (404) or redirects is marked down at
once. One that answers 5xx or sends no first byte in time is marked down only once
another region has answered the same request: a request that fails everywhere is likely the request's fault (a poison
request), and must not open every breaker. A client that hangs up while its request
waits for a region is noticed, and the region's request is closed so the engine drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from geo_router.live.drain import Drain
from geo_router.live.errors import error_response, relayed_error, sse_error_event
from geo_router.live.metrics import RouterMetrics
from geo_router.live.middleware import REGION_HEADER
from geo_router.live.regions import Region
from geo_router.live.requests import InferenceRequest
from geo_router.live.retry_budget import RetryBudget
from geo_router.live.upstream import Upstream, UpstreamError, UpstreamResponse
from geo_router.live.usage import USAGE_TAIL_BYTES, UsageEventFilter, used_tokens
from meridian_core.spec import RouterSpec

log = logging.getLogger(__name__)

# Request headers passed to the region; everything else (host, hop-by-hop, length) is not.
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "traceparent", "tracestate", "x-request-id")
FORWARDED_RESPONSE_HEADERS = ("content-type", "cache-control")
# A region's error answer read to re-shape it; past this it is cut.
MAX_ERROR_BODY = 64 * 1024
# nginx's status for a request whose client closed the connection first.
CLIENT_CLOSED = "499"
# The last event of an OpenAI stream.
SSE_DONE = b"data: [DONE]\n\n"


class RelayResponse(Response):
    """A streamed answer relayed chunk by chunk, whose clean-up runs once however it ends:
    relayed whole, broken, or the client gone.

    Starlette's StreamingResponse runs a task group per response to hear a client hang
    up; here the watcher the request already has (`client_gone`, reading `receive`) ends
    the relay instead, by closing the region's answer (see `Proxy._respond`)."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        client_gone: asyncio.Future,
        status_code: int,
        headers: dict[str, str],
    ):
        self.body_iterator = content
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)
        self._on_close = on_close
        self._client_gone = client_gone

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._client_gone.cancel()
            await self._on_close()


class RegionFailed(Exception):
    """An attempt failed before any byte reached the client; another region may serve it.
    `blames_region`: the region could not be reached at all, whatever was asked."""

    def __init__(self, kind: str, detail: str, blames_region: bool):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.blames_region = blames_region


class ClientGone(Exception):
    """The client hung up before the answer's first byte."""


def is_retryable_status(status: int) -> bool:
    # 404 from a region means its app (route prefix) is gone: the router has already
    # checked the model name. 5xx is the region's fault, and so is a redirect (never
    # followed). Other 4xx are the client's.
    return 300 <= status < 400 or status == 404 or status == 408 or status >= 500


def first_byte_deadline_s(settings: RouterSpec, request: InferenceRequest, region: Region) -> float:
    """How long `region` may take to send the first byte of its answer to `request`."""
    ready = region.model_load(request.model).ready_replicas
    deadline = settings.first_byte_timeout_s + region.cold_start_remaining_ms(time.monotonic(), ready) / 1000
    if not request.stream:  # the whole answer comes before its first byte
        deadline += request.completion_cap * settings.output_token_timeout_s
    return deadline


async def client_disconnected(receive: Receive) -> None:
    """Return once the client has hung up (the request body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


@dataclass
class Attempt:
    region: Region
    upstream: UpstreamResponse
    first_chunk: bytes


class Proxy:
    def __init__(self, upstream: Upstream, metrics: RouterMetrics, settings: RouterSpec, drain: Drain):
        self._upstream = upstream
        self._metrics = metrics
        self._settings = settings
        self._drain = drain
        self._budget = RetryBudget(settings.retry_budget_ratio, settings.retry_budget_burst)

    async def forward(
        self,
        path: str,
        request: InferenceRequest,
        headers: dict[str, str],
        ranked: list[Region],
        started: float,
        reason: str,
        receive: Receive,
        on_first_byte: Callable[[Region, float], None],
        on_done: Callable[[Region, str], None],
        on_usage: Callable[[int], None] | None = None,
        hide_usage: bool = False,
    ) -> Response:
        """Try `ranked` regions in order; answer from the first that produces a byte.

        `reason` is why the first region was chosen; `on_first_byte(region, seconds)`
        hears which region answered and how soon, `on_done(region, outcome)` when its
        last byte has been relayed (outcome: the HTTP status, `stream_broken`, or 499
        when the client hung up first), `on_usage(tokens)` the tokens the answer says
        it used, when it says (a stream says only if asked to). With `hide_usage` the
        stream's usage event, asked for by the router alone, is read but not relayed.
        """
        forwarded = {k: v for k, v in headers.items() if k in FORWARDED_REQUEST_HEADERS}
        # The answer is relayed as it comes, with no Content-Encoding: it must come plain.
        forwarded["accept-encoding"] = "identity"
        self._budget.deposit()
        suspects: list[tuple[Region, RegionFailed]] = []
        tried: list[str] = []
        budget_spent = False
        gone = asyncio.ensure_future(client_disconnected(receive))
        relaying = False  # once a relay has the watcher, the relay ends it
        try:
            for position, region in enumerate(ranked):
                if position > 0 and not self._budget.withdraw():
                    self._metrics.failovers_refused.inc()
                    budget_spent = True
                    break
                tried.append(region.name)
                try:
                    attempt = await self._attempt_unless_gone(region, path, request, forwarded, gone)
                except RegionFailed as failure:
                    self._metrics.upstream_errors.labels(region.name, failure.kind).inc()
                    log.warning("attempt on %s failed before first byte: %s", region.name, failure.detail)
                    if failure.blames_region:
                        region.mark_down(failure.detail, by_request=True)
                    else:
                        suspects.append((region, failure))
                    continue
                except ClientGone:
                    self._metrics.requests.labels(region.name, request.model, CLIENT_CLOSED).inc()
                    log.info("client hung up before the first byte from %s; its request there is closed", region.name)
                    on_done(region, CLIENT_CLOSED)
                    return Response(status_code=int(CLIENT_CLOSED))
                for suspect, failure in suspects:  # this region answered: theirs was their failure
                    suspect.mark_down(failure.detail, by_request=True)
                ttfb_s = time.perf_counter() - started
                region.mark_answered()
                self._metrics.decisions.labels(region.name, reason if position == 0 else "failover").inc()
                self._metrics.ttfb.labels(region.name, request.model).observe(ttfb_s)
                on_first_byte(region, ttfb_s)
                response = await self._respond(attempt, request, started, on_done, on_usage, hide_usage, gone)
                relaying = isinstance(response, RelayResponse)
                return response
        finally:
            if not relaying:
                gone.cancel()
        return self._failed(suspects, tried, budget_spent)

    def _failed(self, suspects: list[tuple[Region, RegionFailed]], tried: list[str], budget_spent: bool) -> Response:
        if len(suspects) >= 2 and not budget_spent:
            # Failed in every region it was tried in: the request, not the regions.
            log.warning("a request failed in every region it was tried in (%s); no breaker opened", ", ".join(tried))
            return error_response(
                502,
                f"the request failed in every region it was tried in ({', '.join(tried)})",
                code="upstream_error",
            )
        for suspect, failure in suspects:  # nothing to compare with: the region is blamed
            suspect.mark_down(failure.detail, by_request=True)
        detail = "the failover budget is spent" if budget_spent else f"tried {', '.join(tried) or 'none'}"
        return error_response(
            503,
            f"no region could serve the request ({detail})",
            code="no_healthy_region",
            headers={"Retry-After": "1"},
        )

    async def _attempt_unless_gone(
        self, region: Region, path: str, request: InferenceRequest, headers: dict[str, str], gone: asyncio.Future
    ) -> Attempt:
        attempt = asyncio.ensure_future(self._attempt(region, path, request, headers))
        await asyncio.wait({attempt, gone}, return_when=asyncio.FIRST_COMPLETED)
        if attempt.done():
            return attempt.result()
        attempt.cancel()  # closes the region's request: the engine drops it
        with contextlib.suppress(asyncio.CancelledError, RegionFailed):
            await attempt
        raise ClientGone

    async def _attempt(self, region: Region, path: str, request: InferenceRequest, headers: dict[str, str]) -> Attempt:
        self._enter(region)
        upstream: UpstreamResponse | None = None
        deadline_s = first_byte_deadline_s(self._settings, request, region)
        try:
            async with asyncio.timeout(deadline_s):
                url, headers = region.openai_url(request.model, path), {**headers, **region.auth_headers()}
                upstream = await self._upstream.post(url, request.body, headers, self._settings.upstream_timeout_s)
                if is_retryable_status(upstream.status):
                    # A 5xx may be this request's doing; a missing app or a redirect is the region's.
                    blames = upstream.status < 500 and upstream.status != 408
                    raise RegionFailed("status", f"HTTP {upstream.status}", blames_region=blames)
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
            if isinstance(error, TimeoutError):
                raise RegionFailed(
                    "first_byte_timeout", f"no first byte within {deadline_s:.1f} s", blames_region=False
                ) from None
            if isinstance(error, UpstreamError):
                raise RegionFailed("connect", str(error), blames_region=True) from None
            raise

    def _enter(self, region: Region) -> None:
        region.in_flight += 1
        self._metrics.in_flight.labels(region.name).inc()

    def _leave(self, region: Region) -> None:
        region.in_flight -= 1
        self._metrics.in_flight.labels(region.name).dec()

    async def _respond(
        self,
        attempt: Attempt,
        request: InferenceRequest,
        started: float,
        on_done: Callable[[Region, str], None],
        on_usage: Callable[[int], None] | None,
        hide_usage: bool,
        client_gone: asyncio.Future,
    ) -> Response:
        region, upstream = attempt.region, attempt.upstream
        status = str(upstream.status)

        def count(outcome: str) -> None:
            self._metrics.requests.labels(region.name, request.model, outcome).inc()
            self._metrics.latency.labels(region.name, request.model).observe(time.perf_counter() - started)
            on_done(region, outcome)

        if upstream.status >= 400:  # the client's error, said by the engine: re-shaped, never relayed raw
            body = attempt.first_chunk + await upstream.read(MAX_ERROR_BODY)
            await upstream.close()
            self._leave(region)
            count(status)
            return relayed_error(upstream.status, body[:MAX_ERROR_BODY])

        headers = {k.lower(): v for k, v in upstream.headers.items() if k.lower() in FORWARDED_RESPONSE_HEADERS}
        headers[REGION_HEADER] = region.name
        outcome = [status]  # what the relay ended with; read once the response is done
        relayed_whole = [False]
        tail = bytearray()  # the answer's last bytes, where its usage is, when someone listens

        cut = [False]

        def cut_by_shutdown() -> None:
            cut[0] = True
            asyncio.ensure_future(upstream.close())  # the relay's next read fails, and it ends

        stop_watching = self._drain.on_cut(cut_by_shutdown)

        def on_client_gone(watcher: asyncio.Future) -> None:
            """The client hung up mid-answer: closing the region's answer ends the relay at
            its next read, and the region's engine drops the request."""
            if not watcher.cancelled():  # cancelled: the relay is over
                asyncio.ensure_future(upstream.close())

        client_gone.add_done_callback(on_client_gone)

        async def finish() -> None:
            stop_watching()
            await upstream.close()
            self._leave(region)
            if not relayed_whole[0] and outcome[0] == status:
                outcome[0] = CLIENT_CLOSED
                log.info("client hung up during the answer from %s", region.name)
            count(outcome[0])
            used = used_tokens(bytes(tail)) if on_usage is not None and relayed_whole[0] else None
            if used is not None:
                on_usage(used)

        def keep_tail(chunk: bytes) -> None:
            if on_usage is not None:
                tail.extend(chunk)
                if len(tail) > 2 * USAGE_TAIL_BYTES:
                    del tail[:-USAGE_TAIL_BYTES]

        usage_filter = UsageEventFilter() if hide_usage and request.stream else None

        def for_client(chunk: bytes) -> bytes:
            keep_tail(chunk)
            return usage_filter.feed(chunk) if usage_filter is not None else chunk

        async def relay() -> AsyncIterator[bytes]:
            try:
                if attempt.first_chunk:
                    if relayed := for_client(attempt.first_chunk):
                        yield relayed
                    relayed_whole[0] = attempt.first_chunk.endswith(SSE_DONE)
                async for chunk in upstream.chunks:
                    if relayed := for_client(chunk):
                        yield relayed
                    # A client may hang up once it has a stream's last event, before the body's end.
                    relayed_whole[0] = chunk.endswith(SSE_DONE)
                if usage_filter is not None and (rest := usage_filter.rest()):
                    yield rest
                relayed_whole[0] = True
            except UpstreamError as error:
                if client_gone.done() and not client_gone.cancelled():
                    return  # nobody to tell; finish() counts the answer as the client's hang-up
                if cut[0]:
                    outcome[0] = "router_shutdown"
                    if request.stream:
                        again = "the router is restarting; send the request again"
                        yield sse_error_event(503, again, "router_shutdown")
                    return
                outcome[0] = "stream_broken"
                self._metrics.upstream_errors.labels(region.name, "stream_broken").inc()
                log.warning("stream from %s broke after first byte: %s", region.name, type(error).__name__)
                if request.stream:
                    yield sse_error_event(502, f"the stream from region {region.name} broke", "stream_broken")

        return RelayResponse(relay(), finish, client_gone, status_code=upstream.status, headers=headers)
