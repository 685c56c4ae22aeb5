"""A request Ray Serve cancels (its client went) stops vLLM's work: vLLM's non-streaming
handlers run it in a task of their own that only an `http.disconnect` cancels."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Send
from vllm.entrypoints.serve.utils.api_utils import with_cancellation

from deployments.client_gone import CancelAsDisconnect

SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/v1/completions",
    "raw_path": b"/v1/completions",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


def staying_client() -> tuple[Receive, Send]:
    """A client that sends its body and never hangs up on its own: only a cancel (Ray's,
    or the app's own) ends its wait for the next message."""
    connected = asyncio.Event()

    async def receive() -> Message:
        if not connected.is_set():
            connected.set()
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(_: Message) -> None:
        return None

    return receive, send


def work_left_running(wrap: bool) -> bool:
    """Cancel a request to a vLLM-style handler once it is generating, as Ray Serve does
    when the client goes; whether the handler's work is still running a second later."""
    generating, stopped = asyncio.Event(), asyncio.Event()
    app = FastAPI()

    @app.post("/v1/completions")
    @with_cancellation
    async def completions(body: dict, raw_request: Request) -> dict:
        generating.set()
        try:
            await asyncio.sleep(60)  # the engine generating
        except asyncio.CancelledError:
            stopped.set()
            raise
        return {}

    asgi: ASGIApp = CancelAsDisconnect(app) if wrap else app
    receive, send = staying_client()

    async def scenario() -> bool:
        request = asyncio.ensure_future(asgi(SCOPE, receive, send))
        await asyncio.wait_for(generating.wait(), 5)
        request.cancel()
        try:
            await asyncio.wait_for(stopped.wait(), 1.0)
        except TimeoutError:
            return True
        return False

    return asyncio.run(scenario())


def test_vllms_handler_outlives_a_cancel_from_outside():
    """Why the middleware exists: without it the generation goes on."""
    assert work_left_running(wrap=False)


def test_a_cancelled_request_reaches_vllm_as_a_disconnect_and_its_work_stops():
    assert not work_left_running(wrap=True)


def receives_left_pending(wrap: bool) -> int:
    """Answer a request to a vLLM-style handler, which cancels its own disconnect listener
    once it has answered; how many tasks are then left pending."""
    app = FastAPI()

    @app.post("/v1/completions")
    @with_cancellation
    async def completions(body: dict, raw_request: Request) -> dict:
        await asyncio.sleep(0.01)
        return {}

    asgi: ASGIApp = CancelAsDisconnect(app) if wrap else app
    receive, send = staying_client()

    async def scenario() -> int:
        await asgi(SCOPE, receive, send)
        await asyncio.sleep(0.05)  # cancellations land
        return len(asyncio.all_tasks() - {asyncio.current_task()})

    return asyncio.run(scenario())


def test_an_answered_request_leaves_no_receive_pending():
    """A pending receive nobody holds is destroyed by the garbage collector (Ray's replica
    logged 'Task was destroyed but it is pending!' twice a request); the middleware
    must leave no more behind than the bare app does."""
    assert receives_left_pending(wrap=False) == 0
    assert receives_left_pending(wrap=True) == 0
