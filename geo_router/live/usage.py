"""The tokens an answer says it used (its `usage`), read from its last bytes: a
non-streamed answer ends with its usage, a stream sends it in its last event when asked
(`stream_options.include_usage`).

A stream the router must settle a token charge on is asked for its usage even when the
client did not ask; that event, which such a client never expected (it has no choices),
is taken out of what the client gets."""

from __future__ import annotations

import json
import re
from typing import Any

# Usage comes last: it is within this many bytes of an answer's end.
USAGE_TAIL_BYTES = 64 * 1024
_USAGE = re.compile(rb'"usage"\s*:\s*\{(?:[^{}]|\{[^{}]*\})*\}')
_COUNT = re.compile(rb'"(total_tokens|prompt_tokens|completion_tokens)"\s*:\s*(\d{1,12})')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
SSE_EVENT_END = b"\n\n"
# An event longer than this is relayed as it comes, not held back whole.
MAX_HELD_BYTES = 1024 * 1024


def used_tokens(tail: bytes) -> int | None:
    """The answer's total tokens, from the last usage object in `tail`; None if it has none."""
    found = [*_USAGE.finditer(tail)]
    if not found:
        return None
    counts = {name.decode(): int(value) for name, value in _COUNT.findall(found[-1].group())}
    if "total_tokens" in counts:
        return counts["total_tokens"]
    if "prompt_tokens" in counts or "completion_tokens" in counts:
        return counts.get("prompt_tokens", 0) + counts.get("completion_tokens", 0)
    return None


def asks_for_usage(fields: dict[str, Any]) -> bool:
    options = fields.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def body_asking_for_usage(fields: dict[str, Any]) -> bytes:
    """The request's body with its stream asking for usage, its other options kept."""
    options = fields.get("stream_options")
    options = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    # ASCII escapes: a prompt may hold a lone surrogate, which UTF-8 cannot encode.
    return json.dumps({**fields, "stream_options": options}).encode()


class UsageEventFilter:
    """Relays a stream's whole events only, without its usage event (the one with no
    choices and a usage): fed chunks as they come, it holds back an event cut across
    chunks until its end arrives."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        end = data.rfind(SSE_EVENT_END)
        if end < 0:
            if len(data) > MAX_HELD_BYTES:
                self._pending = b""
                return data
            self._pending = data
            return b""
        whole, self._pending = data[: end + len(SSE_EVENT_END)], data[end + len(SSE_EVENT_END) :]
        if b'"usage"' not in whole:
            return whole
        events = whole.split(SSE_EVENT_END)[:-1]
        return b"".join(event + SSE_EVENT_END for event in events if not _is_usage_event(event))

    def rest(self) -> bytes:
        """What is left when the stream ends: a last event cut short, relayed as it is."""
        rest, self._pending = self._pending, b""
        return rest


def _is_usage_event(event: bytes) -> bool:
    return event.startswith(b"data:") and _NO_CHOICES.search(event) is not None and b'"usage"' in event
