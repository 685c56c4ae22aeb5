"""The inference endpoints' own way through the router: a pure ASGI middleware that
hands a POST to one of them straight to its handler, past FastAPI's routing, dependency
solving and exception middleware, which cost more CPU per request than the handler's
own work. Everything else goes on to FastAPI.

An exception from the handler is answered by `on_error`, inside the router's envelope
(so the answer carries its request id).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

# URL path -> the path under /v1/ the handler is given.
INFERENCE_PATHS = {
    "/v1/chat/completions": "chat/completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}


class InferencePath:
    def __init__(
        self,
        app: ASGIApp,
        handle: Callable[[Request, str], Awaitable[Response]],
        on_error: Callable[[Exception], Response],
    ):
        self.app = app
        self.handle = handle
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = INFERENCE_PATHS.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if path is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await self.handle(Request(scope, receive), path)
        except Exception as error:
            response = self.on_error(error)
        await response(scope, receive, send)
