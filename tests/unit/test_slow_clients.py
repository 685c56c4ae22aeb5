"""Slow clients cannot exhaust the router: with hundreds of connections trickling
headers or bodies, a normal request is still answered at once."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn

from geo_router.live.app import create_app
from meridian_core.spec import load_spec

from ..conftest import REPO
from .fake_regions import CHAT, FakeRegions

SLOW_CLIENTS = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_slow_clients_do_not_block_others():
    fakes = FakeRegions()
    app = create_app(
        load_spec(REPO / "configs" / "local.yaml"),
        client=httpx.AsyncClient(transport=httpx.MockTransport(fakes.handle)),
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", backlog=1024))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    slow: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "router did not start"
            time.sleep(0.05)
        for i in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:  # headers never finished
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: app")
            else:  # headers done, body promised but trickling
                sock.sendall(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\n"
                    b'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"model": '
                )
            slow.append(sock)
        # Blocked behind the slow clients, this would time out instead of answering.
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, timeout=10)
        assert response.status_code == 200
        assert response.headers["x-meridian-region"] == "local/us-east"
    finally:
        for sock in slow:
            sock.close()
        server.should_exit = True
        thread.join(timeout=10)
