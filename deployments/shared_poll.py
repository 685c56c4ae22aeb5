"""One slow call per key at a time, shared by every poll that arrives while it runs.

The region's `/status` asks each model's replicas for their engine load. A poll must
answer within a deadline, but a call slower than it (replicas short of CPU while a node
boots beside them) is not a replica gone: a poll it misses answers with the last call's
answers while they are younger than `keep_s`, so a starved region does not report zero
ready replicas and lose its traffic. A call that fails, or answers older than `keep_s`,
leave the poll with nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Answer = TypeVar("Answer")


class SharedPoll(Generic[Answer]):
    def __init__(
        self,
        call: Callable[[str], Awaitable[list[Answer]]],
        timeout_s: float,
        keep_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._call = call
        self._timeout_s = timeout_s
        self._keep_s = keep_s
        self._clock = clock
        self._running: dict[str, asyncio.Task[list[Answer]]] = {}
        self._last: dict[str, tuple[float, list[Answer]]] = {}  # key -> (when answered, answers)

    async def answers(self, key: str) -> list[Answer]:
        task = self._running.get(key)
        if task is None or task.done():
            task = asyncio.ensure_future(self._call(key))
            task.add_done_callback(lambda done: self._keep(key, done))
            self._running[key] = task
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._timeout_s)
        except TimeoutError:
            return self._recent(key)
        except Exception as error:  # a replica died mid-call: nothing known is current
            log.warning("the call for %s failed: %s", key, type(error).__name__)
            return []

    def _keep(self, key: str, done: asyncio.Task[list[Answer]]) -> None:
        if done.cancelled() or done.exception() is not None:
            self._last.pop(key, None)
        else:
            self._last[key] = (self._clock(), done.result())

    def _recent(self, key: str) -> list[Answer]:
        kept = self._last.get(key)
        if kept is None or self._clock() - kept[0] > self._keep_s:
            return []
        return kept[1]
