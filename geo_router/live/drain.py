"""Graceful shutdown: on SIGTERM the router stops taking requests, lets answers in
flight finish for the spec's `shutdown_grace_s`, and a moment before that runs out cuts
the streams still open, each ending with an SSE error event that tells the client to
retry (the process is killed at the end of the grace, mid-chunk otherwise)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# Streams are cut this long before the grace ends, for their error events to be sent.
CUT_MARGIN_S = 1.0


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.cut = False
        self._on_cut: set[Callable[[], None]] = set()
        self._on_start: list[Callable[[float], None]] = []

    def on_start(self, callback: Callable[[float], None]) -> None:
        """Call `callback(grace_s)` when draining starts."""
        self._on_start.append(callback)

    def start(self, grace_s: float) -> None:
        """Begin draining; called in the router's event loop."""
        if self.draining:
            return
        self.draining = True
        log.info("shutting down: answers in flight have %.1f s to finish", grace_s)
        for callback in self._on_start:
            callback(grace_s)
        asyncio.get_running_loop().call_later(max(0.0, grace_s - CUT_MARGIN_S), self._cut)

    def on_cut(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when streams are cut; returns what unregisters it."""
        self._on_cut.add(callback)
        return lambda: self._on_cut.discard(callback)

    def _cut(self) -> None:
        self.cut = True
        if self._on_cut:
            log.warning("shutdown grace over: cutting %d answers still in flight", len(self._on_cut))
        for callback in list(self._on_cut):
            callback()
