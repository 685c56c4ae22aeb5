"""The tokens an answer says it used (its `usage`), read from its last bytes: a
non-streamed answer ends with its usage, a stream sends it in its last event when asked
(`stream_options.include_usage`).

A stream the router must settle a token charge on is asked for its usage even when the
client did not ask; that event, which such a client never expected (it has no choices),
is taken out of what the client gets.

The reading and the filter are compiled (routing_core/src/front/usage.rs), the one
implementation the router's compiled front and this Python app both use; this module is
their Python face, and words the request that asks for usage.
"""

from __future__ import annotations

import json
from typing import Any

from routing_core import (
    MAX_HELD_BYTES,  # an event longer than this is relayed as it comes, not held back whole
    USAGE_TAIL_BYTES,  # usage comes last: it is within this many bytes of an answer's end
    UsageEventFilter,
    used_tokens,
)

__all__ = [
    "MAX_HELD_BYTES",
    "USAGE_TAIL_BYTES",
    "UsageEventFilter",
    "asks_for_usage",
    "body_asking_for_usage",
    "used_tokens",
]


def asks_for_usage(fields: dict[str, Any]) -> bool:
    options = fields.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def body_asking_for_usage(fields: dict[str, Any]) -> bytes:
    """The request's body with its stream asking for usage, its other options kept."""
    options = fields.get("stream_options")
    options = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    # ASCII escapes: a prompt may hold a lone surrogate, which UTF-8 cannot encode.
    return json.dumps({**fields, "stream_options": options}).encode()
