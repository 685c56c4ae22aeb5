"""OpenAI-shaped error bodies: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.responses import JSONResponse

# HTTP status -> OpenAI error `type`, as the OpenAI API and vLLM's server use them.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status, headers=headers)


def sse_error_event(status: int, message: str, code: str) -> bytes:
    """A final SSE event for a stream that broke after its first byte was sent."""
    return b"data: " + json.dumps(error_body(status, message, code=code)).encode() + b"\n\n"


# Ray Serve LLM's error message: "Message: <what the engine said>, Internal exception:
# <its class path>, original exception: <the repr>"; only the first part is the client's.
_RAY_ERROR = re.compile(r"^Message: (?P<message>.*?), Internal exception: .*$", re.DOTALL)
_REQUEST_ID = re.compile(r" \(Request ID: [^)]*\)")
MAX_RELAYED_MESSAGE = 1000


def relayed_error(status: int, body: bytes) -> JSONResponse:
    """A region's error answer in OpenAI's shape with the engine's message, and none of
    the serving stack's internals (class paths, its request ids)."""
    message, param = f"the region answered HTTP {status}", None
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        found = _RAY_ERROR.match(error["message"])
        message = _REQUEST_ID.sub("", found.group("message") if found else error["message"])[:MAX_RELAYED_MESSAGE]
        param = error["param"] if isinstance(error.get("param"), str) else None
    return error_response(status, message, param=param)
