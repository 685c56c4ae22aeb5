"""Which of the recent capacity events a stateful peer policy has not read yet.

Every policy is called, like `plan`, with all capacity events of the last `event_memory_s`,
oldest first. SkyServe's placer and the naive spot peer react to each event once, as it
happens. The window only grows at its end and loses its oldest instants whole, so the
unread events are its tail, found from the newest instant read and how many of its events
were read (events are not told apart by value: two stockouts in one zone in one step are equal).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from capacity.model import CapacityEvent


@dataclass(frozen=True)
class ReadMark:
    at_s: float = -math.inf  # the newest instant read
    count: int = 0  # how many events of that instant were read


def unread(events: Iterable[CapacityEvent], mark: ReadMark) -> tuple[list[CapacityEvent], ReadMark]:
    """The events after `mark`, in order, and the mark after reading them."""
    window = list(events)
    after = len(window)
    while after and window[after - 1].at_s > mark.at_s:
        after -= 1
    first = after  # window[first:after] is the instant `mark.at_s`, whose first `mark.count` events were read
    while first and window[first - 1].at_s == mark.at_s:
        first -= 1
    fresh = window[min(after, first + mark.count) :]
    if not fresh:
        return fresh, mark
    newest = fresh[-1].at_s
    start = len(window)
    while start and window[start - 1].at_s == newest:
        start -= 1
    return fresh, ReadMark(newest, len(window) - start)
