"""The tokens an answer says it used (its `usage`), read from its last bytes: a
non-streamed answer ends with its usage, a stream whose client asked for it
(`stream_options.include_usage`) sends it in its last event."""

from __future__ import annotations

import re

# Usage comes last: it is within this many bytes of an answer's end.
USAGE_TAIL_BYTES = 64 * 1024
_USAGE = re.compile(rb'"usage"\s*:\s*\{(?:[^{}]|\{[^{}]*\})*\}')
_COUNT = re.compile(rb'"(total_tokens|prompt_tokens|completion_tokens)"\s*:\s*(\d{1,12})')


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
