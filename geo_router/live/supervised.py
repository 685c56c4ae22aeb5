"""Background tasks that outlive their failures: restarted with a backoff, each failure
logged by type (never a traceback or a message that may carry an address) and counted."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

FIRST_RESTART_S = 0.5
LONGEST_RESTART_S = 30.0


async def supervise(name: str, run: Callable[[], Awaitable[None]], on_failure: Callable[[str], None]) -> None:
    """Run `run` until cancelled, restarting it whenever it fails or returns. The wait
    before a restart doubles while restarts come quickly, and resets once a run has
    lasted longer than the longest wait."""
    delay = FIRST_RESTART_S
    while True:
        started = time.monotonic()
        try:
            await run()
            log.error("background task %s returned; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.error("background task %s failed (%s); restarting it in %.1f s", name, type(error).__name__, delay)
        on_failure(name)
        if time.monotonic() - started > LONGEST_RESTART_S:
            delay = FIRST_RESTART_S
        await asyncio.sleep(delay)
        delay = min(LONGEST_RESTART_S, delay * 2)
