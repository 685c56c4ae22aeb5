"""The router under uvicorn, draining on SIGTERM (geo_router/live/drain.py), behind its
compiled front when the spec has it (geo_router/live/front.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from geo_router.live.app import create_app
from geo_router.live.front import KEEP_ALIVE_S, served_by_front
from meridian_core.spec import PlatformSpec

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn that tells the app when it is asked to stop: uvicorn itself only stops
    accepting and waits, and the app would not know to end its streams cleanly."""

    def __init__(self, app: FastAPI, host: str, port: int, grace_s: float):
        super().__init__(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=grace_s,
                timeout_keep_alive=KEEP_ALIVE_S,
            )
        )
        self._app = app
        self._grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is not None:  # a signal handler: hand the work to the event loop
            self._loop.call_soon_threadsafe(self._app.state.drain.start, self._grace_s)
        super().handle_exit(sig, frame)


def serve_router(spec: PlatformSpec) -> None:
    """Serve the router until it is told to stop."""
    router = spec.router
    unserved = served_by_front(spec) if router.compiled_front else None
    if not router.compiled_front or unserved is not None:
        if unserved is not None:
            log.warning("the router runs without its compiled front: %s", unserved)
        DrainingServer(create_app(spec), router.host, router.port, router.shutdown_grace_s).run()
        return
    back = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    back.bind(("127.0.0.1", 0))
    app = create_app(spec, back_port=back.getsockname()[1])
    DrainingServer(app, "127.0.0.1", 0, router.shutdown_grace_s).run(sockets=[back])
