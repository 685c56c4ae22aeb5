"""The router's failover on both of its data paths, against regions that are real HTTP
servers on loopback: the compiled front (geo_router/live/front.py), which the router
runs with by default, and the Python app alone, with the adapter it then sends requests
through (`AiohttpUpstream`).

test_router.py drives the router through `HttpxUpstream` on `httpx.MockTransport`. Here
nothing is faked below the router: `create_app` gets no client; the router runs under
uvicorn (behind its front, or alone) and the client talks HTTP to it; each region is an
aiohttp.web server on 127.0.0.1 (its own ephemeral port, in a thread with its own event
loop) that answers `/status` well and misbehaves on inference as told.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import trustme
import yaml
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from geo_router.live.app import create_app
from geo_router.live.auth import digest
from geo_router.live.front import served_by_front
from geo_router.live.server import DrainingServer
from meridian_core.spec import model_route, parse_spec

from ..conftest import REPO
from .fake_regions import CHAT, MODEL

# The router waits this long for a region's first byte (router.first_byte_timeout_s).
FIRST_BYTE_TIMEOUT_S = 0.5
# Longest a region waits for the test to release it, or hangs: bounds every test when
# the router misbehaves (a broken adapter then gets a late answer, and the test fails).
REGION_WAIT_S = 5.0
CLIENT_TIMEOUT_S = 15.0
SHUTDOWN_GRACE_S = 2.0

pytestmark = pytest.mark.timeout(60)


# What a region's answer says it used.
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def event(content: str, region: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": content}}], "region": region}).encode() + b"\n\n"


@dataclass
class LoopbackRegion:
    name: str
    # ok | gone (404) | error500 | hang (no headers) | hang_body (headers, no body) | break_stream
    # | redirect (307 elsewhere) | gzip (compresses its answer when the caller accepts it)
    # | hang_watch (no headers; notes whether the router hangs up)
    # | stream_watch (a stream's first event, then silence; notes whether the router hangs up)
    # | linger (a whole stream, [DONE] included, then a wait before the body's end)
    # | ray_error (a 400 as Ray Serve LLM words one: the engine's message, then internals)
    mode: str = "ok"
    port: int = 0
    calls: list[str] = field(default_factory=list)
    traceparents: list[str | None] = field(default_factory=list)
    # Streams send their first event, then wait for the test to release them.
    release: asyncio.Event = field(default_factory=asyncio.Event)
    released_by_test: bool | None = None
    router_hung_up: bool = False

    @property
    def slug(self) -> str:
        return self.name.replace("/", "-")

    async def status(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "region": self.name,
                "models": [MODEL],
                "replicas": {"ready": 1, "starting": 0},
                "autoscaling": None,
                "engine": {"running": 0, "waiting": 0, "kv_cache_usage": 0.1},
            }
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append("v1/chat/completions")
        self.traceparents.append(request.headers.get("traceparent"))
        if self.mode == "gone":  # what Serve's proxy answers for a route prefix it no longer has
            return web.Response(status=404, text="Path '/x' not found.")
        if self.mode == "error500":
            return web.Response(status=500, text="Internal Server Error")
        if self.mode == "ray_error":
            message = (
                "Message: max_tokens is too large (Request ID: 0f3c), Internal exception: "
                "ray.llm._internal.serve.core.ValidationError, original exception: ValueError('x')"
            )
            return web.json_response({"error": {"message": message, "param": "max_tokens"}}, status=400)
        if self.mode == "redirect":
            return web.Response(status=307, headers={"Location": f"/{self.slug}/elsewhere"})
        if self.mode == "gzip" and "gzip" in request.headers.get("Accept-Encoding", ""):
            answer = json.dumps({"object": "chat.completion", "region": self.name}).encode()
            return web.Response(
                body=gzip.compress(answer), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
            )
        if self.mode == "hang":
            await self._wait()
        if self.mode == "hang_watch":
            await self._watch_for_hang_up(request)
            return web.json_response({"object": "chat.completion", "region": self.name})
        if self.mode == "hang_body":
            response = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await response.prepare(request)
            await self._wait()
            with contextlib.suppress(ConnectionResetError):  # the router has usually hung up by now
                await response.write(event("late", self.name))
                await response.write_eof()
            return response
        if not body.get("stream"):
            return web.json_response({"object": "chat.completion", "region": self.name, "usage": USAGE})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        if self.mode == "linger":
            await response.write(event("Paris", self.name) + b"data: [DONE]\n\n")
            await self._wait()
            with contextlib.suppress(ConnectionResetError):
                await response.write_eof()
            return response
        await response.write(event("Par", self.name))
        if self.mode == "stream_watch":
            await self._watch_for_hang_up(request)
            return response
        await self._wait()
        if self.mode == "break_stream":
            assert request.transport is not None
            request.transport.abort()  # the region dies mid-stream
            return response
        await response.write(event("is", self.name))
        if (body.get("stream_options") or {}).get("include_usage") is True:
            # As vLLM sends it: its own event, here cut across two writes.
            usage = json.dumps({"choices": [], "usage": USAGE}).encode()
            await response.write(b"data: " + usage[:20])
            await response.write(usage[20:] + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def elsewhere(self, request: web.Request) -> web.Response:
        """Where a redirect points: a prompt arriving here has been re-sent."""
        self.calls.append("elsewhere")
        return web.json_response({"object": "chat.completion", "region": "elsewhere"})

    async def _watch_for_hang_up(self, request: web.Request) -> None:
        deadline = time.monotonic() + REGION_WAIT_S
        while time.monotonic() < deadline:
            if request.transport is None or request.transport.is_closing():
                self.router_hung_up = True
                return
            await asyncio.sleep(0.02)

    async def _wait(self) -> None:
        try:
            await asyncio.wait_for(self.release.wait(), REGION_WAIT_S)
            self.released_by_test = True
        except TimeoutError:
            self.released_by_test = False


class LoopbackRegions:
    """Both regions of configs/local.yaml as aiohttp.web servers on loopback; over TLS
    with the certificate `tls` holds."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self.regions = {r.slug: r for r in (LoopbackRegion("local/us-east"), LoopbackRegion("local/eu-west"))}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loopback-regions", daemon=True)
        self._runners: list[web.AppRunner] = []

    def __getitem__(self, slug: str) -> LoopbackRegion:
        return self.regions[slug]

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        for slug, region in self.regions.items():
            app = web.Application()
            app.router.add_get(f"/{slug}/status", region.status)
            # The model's own app, as a region serves it (deployments/model_app.py).
            app.router.add_post(f"/{slug}{model_route(MODEL)}/v1/chat/completions", region.chat)
            app.router.add_post(f"/{slug}/elsewhere", region.elsewhere)
            runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._tls).start()
            self._runners.append(runner)
            region.port = runner.addresses[0][1]

    def release(self, slug: str) -> None:
        self._loop.call_soon_threadsafe(self.regions[slug].release.set)

    def stop(self) -> None:
        async def cleanup() -> None:
            for region in self.regions.values():
                region.release.set()  # no handler outlives the test
            for runner in self._runners:
                await runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def regions() -> Iterator[LoopbackRegions]:
    loopback = LoopbackRegions()
    loopback.start()
    try:
        yield loopback
    finally:
        loopback.stop()


@pytest.fixture(params=["compiled_front", "python_alone"])
def router(request: pytest.FixtureRequest, regions: LoopbackRegions) -> Iterator[httpx.Client]:
    """The router for configs/local.yaml, its regions on loopback, under uvicorn, behind
    its compiled front or alone."""
    with running_router(regions, request.param) as client:
        yield client


@pytest.fixture(params=["compiled_front", "python_alone"])
def keyed_router(request: pytest.FixtureRequest, regions: LoopbackRegions) -> Iterator[httpx.Client]:
    """The same with three API keys: `open-key` without limits, `one-a-minute` with one
    request a minute, `tokens` with 600 tokens a minute."""
    keys = [
        {"name": "open-key", "sha256": digest("sk-open")},
        {"name": "one-a-minute", "sha256": digest("sk-limited"), "requests_per_minute": 1},
        {"name": "tokens", "sha256": digest("sk-tokens"), "tokens_per_minute": 600},
    ]
    with running_router(regions, request.param, auth={"keys": keys}) as client:
        yield client


@pytest.fixture(params=["compiled_front", "python_alone"])
def traced_router(
    request: pytest.FixtureRequest, regions: LoopbackRegions
) -> Iterator[tuple[httpx.Client, InMemorySpanExporter]]:
    """The same, its spans exported to memory."""
    exporter = InMemorySpanExporter()
    with running_router(regions, request.param, span_processor=SimpleSpanProcessor(exporter)) as client:
        yield client, exporter


@pytest.fixture
def tls_regions(tmp_path) -> Iterator[tuple[LoopbackRegions, str]]:
    """The regions over TLS, their certificate for `localhost` signed by a CA of the
    test's own, and the file that CA's certificate is in."""
    authority = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(tls)
    ca_file = tmp_path / "regions-ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    loopback = LoopbackRegions(tls)
    loopback.start()
    try:
        yield loopback, str(ca_file)
    finally:
        loopback.stop()


@contextlib.contextmanager
def running_router(
    regions: LoopbackRegions,
    data_path: str,
    span_processor: SpanProcessor | None = None,
    regions_at: str = "http://127.0.0.1",
    **router_settings: object,
) -> Iterator[httpx.Client]:
    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    for region in data["regions"]:
        loopback = regions[region["name"].replace("/", "-")]
        region["endpoint"] = f"{regions_at}:{loopback.port}/{loopback.slug}"
    port = free_port()
    data["router"].update(
        host="127.0.0.1", port=port, first_byte_timeout_s=FIRST_BYTE_TIMEOUT_S, output_token_timeout_s=0.0
    )
    data["router"].update(router_settings)
    if data_path == "compiled_front":
        back = socket.socket()
        back.bind(("127.0.0.1", 0))
        app = create_app(parse_spec(data), back_port=back.getsockname()[1], span_processor=span_processor)
        server = DrainingServer(app, "127.0.0.1", 0, grace_s=SHUTDOWN_GRACE_S)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [back]}, name="router", daemon=True)
    else:
        # No client: requests go through AiohttpUpstream.
        app = create_app(parse_spec(data), span_processor=span_processor)
        server = DrainingServer(app, "127.0.0.1", port, grace_s=SHUTDOWN_GRACE_S)
        thread = threading.Thread(target=server.run, name="router", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "router did not start"
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=CLIENT_TIMEOUT_S) as client:
            client.server = server  # type: ignore[attr-defined]
            client.headers["authorization"] = "Bearer sk-open"  # the open key, where there are keys
            healthy = client.get("/healthz").json()["healthy_regions"]
            assert healthy == ["local/us-east", "local/eu-west"]  # both polled well: any failover is the request's
            yield client
    finally:
        server.should_exit = True
        thread.join(10)


def metric_lines(router: httpx.Client) -> list[str]:
    return router.get("/metrics").text.splitlines()


def assert_counted(router: httpx.Client, line: str, within_s: float = 5.0) -> None:
    """`line` appears in /metrics: a request is counted when its relay has ended, which
    may be just after the client has read the last byte."""
    deadline = time.monotonic() + within_s
    while line not in metric_lines(router):
        assert time.monotonic() < deadline, f"not in /metrics after {within_s} s: {line}"
        time.sleep(0.02)


def test_a_healthy_region_answers_through_aiohttp(router, regions):
    response = router.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["x-meridian-region"] == "local/us-east"
    assert response.json() == {"object": "chat.completion", "region": "local/us-east", "usage": USAGE}
    assert regions["local-eu-west"].calls == []


@pytest.mark.parametrize(
    "mode, kind",
    [("gone", "status"), ("error500", "status"), ("hang", "first_byte_timeout"), ("hang_body", "first_byte_timeout")],
)
def test_failover_before_the_first_byte(router, regions, mode, kind):
    regions["local-us-east"].mode = mode
    response = router.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200, response.text
    assert response.headers["x-meridian-region"] == "local/eu-west"
    assert response.json() == {"object": "chat.completion", "region": "local/eu-west", "usage": USAGE}
    assert regions["local-us-east"].calls == ["v1/chat/completions"]  # tried first, and failed
    assert regions["local-eu-west"].calls == ["v1/chat/completions"]
    if mode.startswith("hang"):
        # Given up on at the router's timeout: the region was still hanging when the answer came.
        assert regions["local-us-east"].released_by_test is None
    lines = metric_lines(router)
    assert f'meridian_router_upstream_errors_total{{kind="{kind}",region="local/us-east"}} 1.0' in lines
    assert 'meridian_router_routing_decisions_total{reason="failover",region="local/eu-west"} 1.0' in lines
    assert_counted(router, f'meridian_router_requests_total{{model="{MODEL}",region="local/eu-west",status="200"}} 1.0')
    # The compiled front tells the region table a moment after (on the router's event loop).
    deadline = time.monotonic() + 5
    while not (us_east := router.get("/regions").json()["regions"][0])["breaker_open"]:
        assert time.monotonic() < deadline, us_east
        time.sleep(0.02)
    assert us_east["name"] == "local/us-east"


def test_a_stream_reaches_the_client_while_the_region_is_still_sending_it(router, regions):
    with router.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-meridian-region"] == "local/us-east"
        chunks = response.iter_raw()
        first = next(chunks)
        # The region sends its second event only once this first one is here (or, from
        # an adapter that buffers, after REGION_WAIT_S: then released_by_test is False).
        regions.release("local-us-east")
        body = first + b"".join(chunks)
    assert first == event("Par", "local/us-east")
    assert regions["local-us-east"].released_by_test is True
    assert body == event("Par", "local/us-east") + event("is", "local/us-east") + b"data: [DONE]\n\n"


def test_a_stream_that_breaks_after_its_first_byte_ends_with_an_error_event_not_a_retry(router, regions):
    regions["local-us-east"].mode = "break_stream"
    with router.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["x-meridian-region"] == "local/us-east"
        chunks = response.iter_raw()
        first = next(chunks)
        regions.release("local-us-east")  # now the region's connection dies
        body = first + b"".join(chunks)
    assert regions["local-us-east"].released_by_test is True
    events = [e for e in body.split(b"\n\n") if e]
    assert len(events) == 2, body
    assert events[0] + b"\n\n" == event("Par", "local/us-east")
    error = json.loads(events[1].removeprefix(b"data: "))["error"]
    assert error["code"] == "stream_broken"
    assert "local/us-east" in error["message"]
    assert regions["local-eu-west"].calls == []  # never sent twice
    lines = metric_lines(router)
    assert 'meridian_router_upstream_errors_total{kind="stream_broken",region="local/us-east"} 1.0' in lines
    assert_counted(
        router, f'meridian_router_requests_total{{model="{MODEL}",region="local/us-east",status="stream_broken"}} 1.0'
    )


def test_a_compressing_region_is_asked_for_plain_bytes(router, regions):
    regions["local-us-east"].mode = "gzip"
    answered = router.post("/v1/chat/completions", json=CHAT)
    assert answered.status_code == 200
    assert answered.json() == {"object": "chat.completion", "region": "local/us-east", "usage": USAGE}


def test_a_redirect_is_the_regions_failure_and_is_never_followed(router, regions):
    regions["local-us-east"].mode = "redirect"
    answered = router.post("/v1/chat/completions", json=CHAT)
    assert answered.status_code == 200 and answered.headers["x-meridian-region"] == "local/eu-west"
    assert "elsewhere" not in regions["local-us-east"].calls


def test_a_slow_upload_is_not_counted_in_the_regions_time_to_first_byte(router, regions):
    def slow_body() -> Iterator[bytes]:
        yield b'{"model": "' + MODEL.encode() + b'", '
        time.sleep(2.0)  # the client is slow to send the rest; the region answers at once
        yield b'"messages": [{"role": "user", "content": "hi"}]}'

    answered = router.post("/v1/chat/completions", content=slow_body(), headers={"content-type": "application/json"})
    assert answered.status_code == 200
    scraped = router.get("/metrics").text
    (line,) = [
        line
        for line in scraped.splitlines()
        if line.startswith("meridian_router_time_to_first_byte_seconds_sum") and "local/us-east" in line
    ]
    assert float(line.split()[-1]) < 1.5  # the 2 s upload is not in it


def test_a_client_that_hangs_up_before_the_first_byte_frees_the_region(router, regions):
    regions["local-us-east"].mode = "hang_watch"
    with pytest.raises(httpx.ReadTimeout):
        # Gives up, closing its connection, before the router's own first-byte deadline.
        router.post("/v1/chat/completions", json=CHAT, timeout=FIRST_BYTE_TIMEOUT_S / 3)
    deadline = time.monotonic() + REGION_WAIT_S
    while not regions["local-us-east"].router_hung_up:
        assert time.monotonic() < deadline, "the router kept the region's request open"
        time.sleep(0.05)
    lines = metric_lines(router)
    assert f'meridian_router_requests_total{{model="{MODEL}",region="local/us-east",status="499"}} 1.0' in lines
    assert 'meridian_router_in_flight_requests{region="local/us-east"} 0.0' in lines


def test_a_stream_whose_client_hangs_up_is_closed_at_the_region_and_counted_as_a_client_disconnect(router, regions):
    regions["local-us-east"].mode = "stream_watch"
    with router.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert next(response.iter_raw()) == event("Par", "local/us-east")
    # The client has gone mid-stream, while the region is silent: the router closes the
    # region's request, so its engine drops it, without waiting for the region's next word.
    deadline = time.monotonic() + REGION_WAIT_S
    while not regions["local-us-east"].router_hung_up:
        assert time.monotonic() < deadline, "the router kept the region's stream open"
        time.sleep(0.05)
    wanted = f'meridian_router_requests_total{{model="{MODEL}",region="local/us-east",status="499"}} 1.0'
    while wanted not in metric_lines(router):
        assert time.monotonic() < deadline, "the cut stream was not counted as a client disconnect"
        time.sleep(0.05)
    assert f'meridian_router_requests_total{{model="{MODEL}",region="local/us-east",status="200"}}' not in (
        "\n".join(metric_lines(router))
    )


def test_on_sigterm_a_stream_still_open_at_the_end_of_the_grace_is_cut_with_an_error_event(router, regions):
    with router.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        chunks = response.iter_raw()
        assert next(chunks) == event("Par", "local/us-east")

        router.server.handle_exit(signal.SIGTERM, None)
        rest = b"".join(chunks)  # the region never sends the rest: the router cuts it

    last = json.loads(rest.strip().removeprefix(b"data: "))
    assert last["error"]["code"] == "router_shutdown"
    assert regions["local-us-east"].released_by_test is None  # still waiting when the router cut it


def test_a_client_that_leaves_after_the_streams_last_event_was_answered_in_full(router, regions):
    regions["local-us-east"].mode = "linger"
    with router.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        received = b""
        for chunk in response.iter_raw():
            received += chunk
            if received.endswith(b"data: [DONE]\n\n"):
                break  # as the openai client does: it has the whole answer, and hangs up
    # Counted once the region ends the body (it lingers up to REGION_WAIT_S).
    answered = f'meridian_router_requests_total{{model="{MODEL}",region="local/us-east",status="200"}} 1.0'
    assert_counted(router, answered, within_s=REGION_WAIT_S + 5)
    assert 'status="499"' not in "\n".join(metric_lines(router))


def test_a_regions_error_answer_keeps_the_engines_words_without_the_stacks_internals(router, regions):
    regions["local-us-east"].mode = "ray_error"
    answered = router.post("/v1/chat/completions", json=CHAT)
    assert answered.status_code == 400
    assert answered.json() == {
        "error": {
            "message": "max_tokens is too large",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": None,
        }
    }
    assert regions["local-eu-west"].calls == []  # the client's error: not failed over
    assert_counted(router, f'meridian_router_requests_total{{model="{MODEL}",region="local/us-east",status="400"}} 1.0')


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, None),
        (json.dumps({"model": MODEL}).encode(), 400, "messages"),
        (json.dumps({**CHAT, "stream": "yes"}).encode(), 400, "stream"),
        (json.dumps({**CHAT, "model": "no-such-model"}).encode(), 404, "model"),
    ],
)
def test_a_request_the_router_refuses_gets_the_same_answer_on_either_path(router, body, status, param):
    answered = router.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert answered.status_code == status
    assert answered.json()["error"]["param"] == param
    assert answered.headers["x-meridian-region"] == "none" and len(answered.headers["x-request-id"]) >= 16


def test_the_regions_view_counts_the_requests_in_flight(router, regions):
    with router.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        chunks = response.iter_raw()
        next(chunks)  # the region sent its first event, and waits to be released
        seen = {r["name"]: r["in_flight"] for r in router.get("/regions").json()["regions"]}
        assert seen == {"local/us-east": 1, "local/eu-west": 0}
        assert 'meridian_router_in_flight_requests{region="local/us-east"} 1.0' in metric_lines(router)
        regions.release("local-us-east")
        b"".join(chunks)
    assert_counted(router, 'meridian_router_in_flight_requests{region="local/us-east"} 0.0')


@pytest.fixture
def access_log_on(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The access log on from before the router starts, as the router's own logging has it."""
    caplog.set_level(logging.INFO, logger="meridian.access")
    return caplog


def test_every_answer_is_one_access_log_line(access_log_on, router):
    caplog = access_log_on
    answered = router.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "req-one"})
    refused = router.post("/v1/chat/completions", json={"model": MODEL}, headers={"x-meridian-peer": "203.0.113.9"})
    assert answered.headers["x-request-id"] == "req-one"
    deadline = time.monotonic() + 5
    while len(lines := [json.loads(r.getMessage()) for r in caplog.records if r.name == "meridian.access"]) < 2:
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)
    by_id = {line["request_id"]: line for line in lines}
    assert by_id["req-one"] | {"duration_ms": 0} == {
        "request_id": "req-one",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "region": "local/us-east",
        "model": MODEL,
        "key": None,
        "client": "127.0.0.1",
        "duration_ms": 0,
    }
    refusal = by_id[refused.headers["x-request-id"]]
    assert refusal["status"] == 400
    assert refusal["client"] == "127.0.0.1"  # a client cannot say where it is from


def test_api_keys_and_their_limits_hold_on_either_path(keyed_router):
    assert keyed_router.post("/v1/chat/completions", json=CHAT, headers={"authorization": ""}).status_code == 401
    wrong = keyed_router.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    for _ in range(2):
        assert keyed_router.post("/v1/chat/completions", json=CHAT).status_code == 200  # the open key
    limited = {"authorization": "Bearer sk-limited"}
    assert keyed_router.post("/v1/chat/completions", json=CHAT, headers=limited).status_code == 200
    refused = keyed_router.post("/v1/chat/completions", json=CHAT, headers=limited)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_a_token_charge_is_settled_on_the_answers_usage(keyed_router, regions):
    tokens = {"authorization": "Bearer sk-tokens"}
    body = {**CHAT, "max_tokens": 500}  # charged ~510 ahead of each; 600 a minute
    never = {**CHAT, "max_tokens": 5000}  # more than the key's minute: never admissible
    refused = keyed_router.post("/v1/chat/completions", json=never, headers=tokens)
    assert refused.status_code == 429 and "set max_tokens lower" in refused.json()["error"]["message"]
    answers = [keyed_router.post("/v1/chat/completions", json=body, headers=tokens) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 200]  # the region said 15 each
    assert answers[0].json()["usage"] == USAGE


def test_a_stream_is_settled_on_its_usage_which_a_client_that_did_not_ask_never_sees(keyed_router, regions):
    regions.release("local-us-east")
    tokens = {"authorization": "Bearer sk-tokens"}
    body = {**CHAT, "max_tokens": 500, "stream": True}  # charged ~510 ahead of each; 600 a minute
    answers = [keyed_router.post("/v1/chat/completions", json=body, headers=tokens) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 200]  # the region said 15 each
    for answer in answers:
        assert answer.content == event("Par", "local/us-east") + event("is", "local/us-east") + b"data: [DONE]\n\n"
    asked = {**body, "stream_options": {"include_usage": True}}
    answer = keyed_router.post("/v1/chat/completions", json=asked, headers=tokens)
    assert answer.status_code == 200 and b'{"choices": [], "usage": {"prompt_tokens": 10,' in answer.content


def finished_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    """The one span exported, waited for: the front's are exported a moment after."""
    deadline = time.monotonic() + 5
    while not (spans := exporter.get_finished_spans()):
        assert time.monotonic() < deadline, "no span exported"
        time.sleep(0.02)
    (span,) = spans
    return span


def test_a_request_is_one_server_span_that_continues_the_callers_trace(traced_router, regions):
    router, exporter = traced_router
    trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = router.post(
        "/v1/chat/completions", json=CHAT, headers={"traceparent": f"00-{trace_id}-{caller_span}-01"}
    )
    assert response.status_code == 200
    span = finished_span(exporter)
    assert span.kind == SpanKind.SERVER and span.name == "POST /v1/chat/completions"
    assert format(span.context.trace_id, "032x") == trace_id
    assert format(span.parent.span_id, "016x") == caller_span
    assert span.attributes["meridian.region"] == "local/us-east"
    assert span.attributes["meridian.request_id"] == response.headers["x-request-id"]
    assert span.attributes["http.response.status_code"] == 200
    assert span.status.status_code != StatusCode.ERROR
    # The region's request is the span's child.
    assert regions["local-us-east"].traceparents == [f"00-{trace_id}-{format(span.context.span_id, '016x')}-01"]


def test_a_stream_that_breaks_is_an_error_span_of_a_trace_the_router_started(traced_router, regions):
    router, exporter = traced_router
    regions["local-us-east"].mode = "break_stream"
    with router.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        chunks = response.iter_raw()
        next(chunks)
        regions.release("local-us-east")
        b"".join(chunks)
    span = finished_span(exporter)
    assert span.parent is None
    assert span.status.status_code == StatusCode.ERROR and span.status.description == "stream_broken"
    assert span.attributes["http.response.status_code"] == 502
    (sent,) = regions["local-us-east"].traceparents
    # A trace started here: sampled, its id random (W3C trace context level 2), as the SDK says.
    assert sent == f"00-{format(span.context.trace_id, '032x')}-{format(span.context.span_id, '016x')}-03"


@pytest.mark.parametrize("data_path", ["compiled_front", "python_alone"])
def test_regions_reached_over_tls_are_trusted_by_the_specs_ca(tls_regions, data_path):
    regions, ca_file = tls_regions
    regions.release("local-us-east")
    with running_router(regions, data_path, regions_at="https://localhost", region_ca_file=ca_file) as router:
        answer = router.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert answer.status_code == 200 and answer.headers["x-meridian-region"] == "local/us-east"
        assert answer.content == event("Par", "local/us-east") + event("is", "local/us-east") + b"data: [DONE]\n\n"


def test_regions_reached_over_tls_at_an_ip_address_leave_the_port_to_the_python_app():
    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    for endpoint, unserved in (("https://10.0.0.7:8443", True), ("https://region.example", False)):
        data["regions"][1]["endpoint"] = endpoint
        reason = served_by_front(parse_spec(data))
        assert (reason is not None and "local/eu-west" in reason) == unserved, reason


def test_a_body_over_the_cap_sent_without_its_length_is_refused_alike(router, regions):
    def chunked() -> Iterator[bytes]:
        yield b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(5):  # 5 MiB, over the router's 4 MiB cap
            yield b"x" * (1024 * 1024)
        yield b'"}]}'

    refused = router.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert refused.status_code == 413
    assert refused.json()["error"]["message"] == "request body exceeds 4194304 bytes"
    assert refused.headers["x-meridian-region"] == "none" and refused.headers["x-request-id"]
    assert regions["local-us-east"].calls == []
