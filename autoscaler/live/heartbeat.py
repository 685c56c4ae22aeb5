"""`GET /healthz` for a loop with no HTTP server of its own (the global loop): 200 while
its last finished tick is recent, 503 once it is stale, so Kubernetes' liveness probe
restarts a loop that is stuck rather than one that is merely slow."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Heartbeat:
    def __init__(self, stale_after_s: float, clock: Callable[[], float] = time.monotonic):
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._last = clock()  # a loop that has just started counts as alive

    def beat(self) -> None:
        self._last = self._clock()

    def age_s(self) -> float:
        return self._clock() - self._last

    def alive(self) -> bool:
        return self.age_s() <= self.stale_after_s


def serve_health(heartbeat: Heartbeat, host: str, port: int) -> ThreadingHTTPServer:
    """Answer `/healthz` from a daemon thread; the caller's loop beats the heartbeat."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != "/healthz":
                self._answer(404, {"status": "not found"})
                return
            alive = heartbeat.alive()
            body = {"status": "ok" if alive else "stale", "last_tick_age_s": round(heartbeat.age_s(), 1)}
            self._answer(200 if alive else 503, body)

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:  # probes every few seconds: not worth a line each
            pass

    server = ThreadingHTTPServer((host, port), Health)
    threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
    return server
