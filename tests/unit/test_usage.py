"""Reading an answer's usage, and hiding a stream's usage event from a client that did not
ask for it (geo_router/live/usage.py)."""

from __future__ import annotations

import json

from geo_router.live.usage import MAX_HELD_BYTES, UsageEventFilter, asks_for_usage, body_asking_for_usage

CONTENT = b'data: {"choices":[{"delta":{"content":"the usage of words"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
DONE = b"data: [DONE]\n\n"


def relayed(chunks: list[bytes]) -> bytes:
    events = UsageEventFilter()
    return b"".join(events.feed(chunk) for chunk in chunks) + events.rest()


def test_the_usage_event_is_taken_out_wherever_the_chunks_cut_the_stream():
    stream = CONTENT + USAGE + DONE
    for cut in range(1, len(stream)):
        assert relayed([stream[:cut], stream[cut:]]) == CONTENT + DONE
    # A choice whose text says "usage" is the model's answer, not the usage event.
    assert relayed([CONTENT, DONE]) == CONTENT + DONE


def test_an_event_cut_short_is_relayed_as_it_came_and_a_huge_one_is_not_held():
    assert relayed([CONTENT, b'data: {"choices":[{"de']) == CONTENT + b'data: {"choices":[{"de'
    events = UsageEventFilter()
    huge = b"data: " + b"x" * MAX_HELD_BYTES
    assert events.feed(huge) == huge and events.rest() == b""


def test_the_request_asks_for_usage_keeping_its_other_stream_options():
    fields = {"model": "m", "stream": True, "stream_options": {"continuous_usage_stats": False}, "prompt": "\ud800"}
    asked = json.loads(body_asking_for_usage(fields))
    assert asked["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    assert asked["prompt"] == "\ud800" and asks_for_usage(asked) and not asks_for_usage(fields)
    assert not asks_for_usage({"stream_options": "yes"})
