"""Validate the few fields the router needs before it forwards a body unchanged."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


class InvalidRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


@dataclass(frozen=True)
class InferenceRequest:
    model: str
    stream: bool
    body: bytes  # forwarded byte for byte
    fields: dict[str, Any]


# Per endpoint: the field besides `model` that must be present, and its accepted types.
REQUIRED_INPUT = {
    "chat/completions": ("messages", (list,)),
    "completions": ("prompt", (str, list)),
    "embeddings": ("input", (str, list)),
}


def parse_inference_request(endpoint: str, body: bytes) -> InferenceRequest:
    if not body:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        fields = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"request body is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    if not isinstance(fields, dict):
        raise InvalidRequest("request body must be a JSON object")

    model = fields.get("model")
    if model is None:
        raise InvalidRequest("missing required field 'model'", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", param="model")

    input_field, input_types = REQUIRED_INPUT[endpoint]
    value = fields.get(input_field)
    if value is None:
        raise InvalidRequest(f"missing required field '{input_field}'", param=input_field)
    if not isinstance(value, input_types) or (isinstance(value, list) and not value):
        kinds = " or ".join("a non-empty array" if t is list else "a string" for t in input_types)
        raise InvalidRequest(f"'{input_field}' must be {kinds}", param=input_field)
    if input_field == "messages" and not all(isinstance(m, dict) for m in value):
        raise InvalidRequest("every item of 'messages' must be an object", param="messages")

    stream = fields.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    return InferenceRequest(model=model, stream=stream, body=body, fields=fields)


# Longest session identifier (X-Session-Id, or the body's `user`) the router keeps affinity for.
MAX_SESSION_ID_CHARS = 256


def session_key(header: str | None, fields: dict[str, Any]) -> str | None:
    """The request's session as a fixed-size key: the routing memory never holds what a
    client sent, however long."""
    user = fields.get("user")
    for name, value in (("x-session-id", header), ("user", user)):
        if isinstance(value, str) and value:
            if len(value) > MAX_SESSION_ID_CHARS:
                raise InvalidRequest(f"'{name}' is longer than {MAX_SESSION_ID_CHARS} characters", param=name)
            return hashlib.blake2b(value.encode(), digest_size=16).hexdigest()
    return None


# Completion tokens reserved against a tokens-per-minute limit when a request sets no max.
DEFAULT_COMPLETION_RESERVE = 256


def completion_cap(fields: dict[str, Any]) -> int:
    """The most completion tokens a request may generate, for tokens-per-minute limits."""
    cap = fields.get("max_completion_tokens") or fields.get("max_tokens")
    return cap if isinstance(cap, int) and cap > 0 else DEFAULT_COMPLETION_RESERVE


class BodyTooLarge(InvalidRequest):
    def __init__(self, limit: int):
        super().__init__(f"request body exceeds {limit} bytes", status=413)


async def read_capped_body(receive_chunks, declared_length: str | None, limit: int) -> bytes:  # type: ignore[no-untyped-def]
    """Read a body from an async iterator of chunks, refusing more than `limit` bytes."""
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in receive_chunks:
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)
