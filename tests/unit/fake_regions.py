"""Fake regions for router tests: answer the router's HTTP calls as region apps would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from starlette.testclient import TestClient

from geo_router.live.app import create_app
from meridian_core.contracts import CapacityReport, ScalingView
from meridian_core.spec import PlatformSpec

MODEL = "smollm2-135m-instruct"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}]}


@dataclass
class FakeRegion:
    name: str
    ready: int = 1
    waiting: int = 0
    # ok | refuse | hang | gone | error500 | break_stream | bad_request | ray_error | echo500
    mode: str = "ok"
    # The region's published scaling decision; None for a fixed replica count.
    autoscaling: ScalingView | None = None
    # What its capacity loop could not place; None when it placed everything.
    capacity: CapacityReport | None = None
    # Sent as the /status body instead of a well-formed one.
    status_body: bytes | None = None
    models: list[str] = field(default_factory=lambda: [MODEL])
    # Embedding models: asked for a completion, they refuse it as vLLM does.
    embed_models: list[str] = field(default_factory=list)
    # Each ready replica's engine load as /status lists it; None lists none.
    per_replica: list[dict] | None = None
    # Each call's path under the region's endpoint, a model app's prefix taken off.
    calls: list[str] = field(default_factory=list)
    # The model app each call reached; None for the control app's (/status).
    model_apps: list[str | None] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def scaled_to_zero(cold_start_s: float = 60.0) -> ScalingView:
    """An autoscaled region's published decision while it idles at zero."""
    return ScalingView(
        target=0,
        own_target=0,
        reason="idle",
        ready=0,
        starting=0,
        cold_start_s=cold_start_s,
        cold_start_measured=False,
        min_replicas=0,
        max_replicas=2,
        recent_requests=0,
        at=0.0,
    )


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def streamed(status: int, *, json_body: object = None, text: str = "") -> httpx.Response:
    """A response whose body arrives as a stream, as it does over a real connection."""
    if json_body is not None:
        return httpx.Response(
            status, headers={"content-type": "application/json"}, content=chunks(json.dumps(json_body).encode())
        )
    return httpx.Response(status, headers={"content-type": "text/plain"}, content=chunks(text.encode()))


class FakeRegions:
    """Answers the router's HTTP calls as the region apps would."""

    def __init__(self) -> None:
        self.regions = {"local-us-east": FakeRegion("local/us-east"), "local-eu-west": FakeRegion("local/eu-west")}

    def __getitem__(self, slug: str) -> FakeRegion:
        return self.regions[slug]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        slug, _, rest = request.url.path.lstrip("/").partition("/")
        region = self.regions[slug]
        model_app = None
        if rest.startswith("models/"):  # <endpoint>/models/<model id>/v1/...: that model's own app
            model_app, _, tail = rest.removeprefix("models/").partition("/v1/")
            rest = f"v1/{tail}"
        region.calls.append(rest)
        region.model_apps.append(model_app)
        region.headers.append(dict(request.headers))
        if region.mode == "refuse":
            raise httpx.ConnectError("connection refused", request=request)
        if region.mode == "hang":
            await asyncio.sleep(60)
        if region.mode == "gone":
            return streamed(404, text="Path '/x' not found.")
        if rest.startswith("v1/") and model_app not in region.models:  # no such app: the control app's 404
            return streamed(404, json_body={"detail": "Not Found"})
        if rest == "status" and region.status_body is not None:
            return httpx.Response(200, headers={"content-type": "application/json"}, content=region.status_body)
        if rest == "status":
            return httpx.Response(
                200,
                json={
                    "region": region.name,
                    "models": region.models,
                    "replicas": {
                        "ready": region.ready,
                        "starting": max(0, region.autoscaling.target - region.ready) if region.autoscaling else 0,
                    },
                    "autoscaling": region.autoscaling.model_dump() if region.autoscaling else None,
                    "capacity": region.capacity.model_dump() if region.capacity else None,
                    "engine": {"running": min(region.waiting, 16), "waiting": region.waiting, "kv_cache_usage": 0.1},
                    "per_replica": region.per_replica or [],
                },
            )
        if region.mode == "error500":
            return streamed(500, text="Internal Server Error")
        if region.mode == "bad_request":
            return streamed(400, json_body={"error": {"message": "max_tokens too large", "type": "BadRequestError"}})
        if region.mode == "ray_error":  # Ray Serve LLM's error shape, its internals included
            message = (
                "Message: max_tokens must be at most 1024 (Request ID: 9f2c), Internal exception: "
                "ray.llm._internal.serve.core.configs.openai_api_models.OpenAIHTTPException (Request ID: 9f2c), "
                "original exception: OpenAIHTTPException(status_code=400)"
            )
            return streamed(400, json_body={"error": {"message": message, "type": "OpenAIHTTPException", "code": 400}})
        if region.mode == "echo500":  # an error page that repeats the prompt
            return streamed(500, text="Internal Server Error while handling: " + request.content.decode())
        body = json.loads(request.content)
        if body.get("model") != model_app:  # as vLLM answers for a model it does not serve
            return streamed(404, json_body={"error": {"message": f"The model `{body.get('model')}` does not exist."}})
        if rest in ("v1/completions", "v1/chat/completions") and body.get("model") in region.embed_models:
            return streamed(400, json_body={"error": {"message": "this model does not generate text"}})
        if rest == "v1/embeddings":
            return streamed(200, json_body={"object": "list", "data": [{"embedding": [0.5]}], "region": region.name})
        if body.get("stream"):
            usage = (body.get("stream_options") or {}).get("include_usage") is True
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=self._stream(region, usage)
            )
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        return streamed(200, json_body={"object": "chat.completion", "region": region.name, "usage": usage})

    async def _stream(self, region: FakeRegion, usage: bool) -> AsyncIterator[bytes]:
        yield b'data: {"choices":[{"delta":{"content":"Par"}}]}\n\n'
        if region.mode == "break_stream":
            raise httpx.ReadError("peer closed connection")
        yield b'data: {"choices":[{"delta":{"content":"is"}}]}\n\n'
        if usage:  # as vLLM sends it: its own event, cut across two reads, [DONE] right behind
            yield b'data: {"choices":[],"usage":{"prompt_tokens":10,'
            yield b'"completion_tokens":5,"total_tokens":15}}\n\ndata: [DONE]\n\n'
        else:
            yield b"data: [DONE]\n\n"


@contextmanager
def running_router(spec: PlatformSpec, fakes: FakeRegions) -> Iterator[TestClient]:
    """The router app for `spec` with its lifespan running, reaching `fakes` for regions."""
    client = httpx.AsyncClient(transport=httpx.MockTransport(fakes.handle))
    app = create_app(spec, client=client)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.app_state = app.state
        yield test_client
