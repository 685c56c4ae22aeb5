"""The envelope every response gets: a request id, the region header, an access log line.

Pure ASGI (no BaseHTTPMiddleware) so streamed bodies pass through untouched.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
REGION_HEADER = "x-meridian-region"

access_log = logging.getLogger("meridian.access")


def request_id_of(scope: Scope) -> str:
    return scope["state"]["request_id"]


class EnvelopeMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        # A caller's id is kept if it is sane; otherwise the router makes one.
        request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        response: dict[str, object] = {}

        async def send_enveloped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != REQUEST_ID_HEADER.encode()]
                if not any(k == REGION_HEADER.encode() for k, _ in headers):
                    headers.append((REGION_HEADER.encode(), b"none"))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message["headers"] = headers
                response["status"] = message["status"]
                response["region"] = dict(headers)[REGION_HEADER.encode()].decode()
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._log(scope, request_id, response, started)

        await self.app(scope, receive, send_enveloped)

    @staticmethod
    def _log(scope: Scope, request_id: str, response: dict[str, object], started: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        state = scope["state"]
        access_log.info(
            json.dumps(
                {
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": response.get("status"),
                    "region": response.get("region"),
                    "model": state.get("model"),
                    "key": state.get("key"),
                    "client": scope["client"][0] if scope.get("client") else None,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                }
            )
        )
