"""A fast OpenAI-compatible upstream for router benchmarks: streams N tokens, one SSE
event each, `gap_ms` apart. It also answers what routers probe: `/health`
(vllm-router), `/status` (Meridian), `/v1/models`.

    python benchmarks/fake_upstream.py --port 8300 --tokens 32 --gap-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from meridian_core.spec import model_route

MODEL = "bench-model"


def build_app(tokens: int, gap_ms: float) -> Starlette:
    gap_s = gap_ms / 1000

    def chunk(index: int) -> bytes:
        body = {
            "id": "cmpl-bench",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": f"t{index} "}, "finish_reason": None}],
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    async def stream() -> object:
        for index in range(tokens):
            yield chunk(index)
            if gap_s and index < tokens - 1:
                await asyncio.sleep(gap_s)
        yield b"data: [DONE]\n\n"

    async def completions(request: Request) -> Response:
        await request.body()
        return StreamingResponse(stream(), media_type="text/event-stream")

    async def health(_: Request) -> Response:
        return Response(b"", status_code=200)

    async def status(_: Request) -> Response:
        return JSONResponse(
            {
                "region": "bench/upstream",
                "models": [MODEL],
                "replicas": {"ready": 1},
                "engine": {"running": 0, "waiting": 0},
            }
        )

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})

    openai = [
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models),
    ]
    # Served at the root, as vLLM is (vllm-router), and under the model's route, as a
    # Meridian region's model app is (the geo router).
    return Starlette(
        routes=[
            *openai,
            Mount(model_route(MODEL), routes=openai),
            Route("/health", health),
            Route("/status", status),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.tokens, args.gap_ms),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
