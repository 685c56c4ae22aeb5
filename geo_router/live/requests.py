"""Validate the few fields the router needs before it forwards a body unchanged."""

from __future__ import annotations

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
    # The most completion tokens it may make the engine generate (completion_cap).
    completion_cap: int = 0


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
    """The request's session id. The routing memory keeps only its 64-bit hash (as the
    compiled front keys the same id), never what a client sent."""
    user = fields.get("user")
    for name, value in (("x-session-id", header), ("user", user)):
        if isinstance(value, str) and value:
            if len(value) > MAX_SESSION_ID_CHARS:
                raise InvalidRequest(f"'{name}' is longer than {MAX_SESSION_ID_CHARS} characters", param=name)
            return value
    return None


# More choices than this are the engine's to refuse; they are charged as this many.
MAX_CHOICES = 128


def completion_cap(endpoint: str, fields: dict[str, Any], prompt_tokens: int, max_model_len: int) -> int:
    """The most completion tokens a request may make the engine generate, over all its
    `n` choices: each up to its max_tokens, or without one, the rest of the context."""
    if endpoint == "embeddings":
        return 0
    cap = fields.get("max_completion_tokens") or fields.get("max_tokens")
    per_choice = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else 0
    per_choice = min(per_choice, max_model_len) or max(1, max_model_len - prompt_tokens)
    n = fields.get("n", 1)
    choices = min(n, MAX_CHOICES) if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    return choices * per_choice


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
