"""A cancelled request reaches vLLM as the client's disconnect.

When a client goes, Ray Serve's direct ingress cancels the task running the replica's
ASGI app. vLLM's non-streaming handlers (`with_cancellation`) run their work in a task
of their own and cancel it only on an `http.disconnect` they receive; cancelled from
outside, they leave that task running, and the engine finishes a generation nobody
will read. So the app runs in a task of its own here: when Ray cancels the request, the
app's `receive` answers `http.disconnect`, as a server's would, and vLLM stops the work
itself.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

DISCONNECT: Message = {"type": "http.disconnect"}


class CancelAsDisconnect:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def receive_until_gone() -> Message:
            if gone.done():
                return DISCONNECT
            receiving = asyncio.ensure_future(receive())
            try:
                await asyncio.wait((receiving, gone), return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Also when this receive is cancelled itself, as vLLM's disconnect listener
                # is once its handler has answered: a receive left pending would be
                # destroyed pending by the garbage collector, outside the event loop.
                if not receiving.done():
                    receiving.cancel()
            return receiving.result() if receiving.done() else DISCONNECT

        serving = asyncio.ensure_future(self.app(scope, receive_until_gone, send))
        try:
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            gone.set_result(None)
            # The app winds down on its own; what it then fails to send has no reader.
            serving.add_done_callback(_retrieve)
            raise


def _retrieve(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.debug("a cancelled request's app ended with %s", type(done.exception()).__name__)
