"""A loopback reverse proxy in front of moto that can answer chosen AWS operations itself.

moto launches whatever it is asked to and never runs out of capacity or quota, so the
refusals the capacity providers must handle cannot come from moto. boto3 talks to
this proxy instead (its `endpoint_url`); the proxy forwards every request to moto
unchanged, except operations a test has told it to answer, for which it returns the
response body AWS itself would send (e.g. EC2's error XML with HTTP 500 for
InsufficientInstanceCapacity). boto3 then parses that answer with its real parsers.

The operation is read the way AWS reads it: `Action=` in the form body for query
protocols (EC2), the `X-Amz-Target` header for JSON protocols (Service Quotas).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from moto.server import ThreadedMotoServer

AWS_REGION = "us-east-1"

# Headers this proxy sets itself (or that describe the upstream connection, not the answer).
NOT_PASSED = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    content_type: str = "text/xml;charset=UTF-8"


def ec2_error(code: str, message: str, status: int = 400) -> Answer:
    """EC2's error response, as the query API sends it."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>5d1f3c2e-0b8f-4e57-9a56-6f1d2c3b4a59</RequestID></Response>"
    )
    return Answer(status, body)


def offline_aws_env() -> dict[str, str]:
    """Dummy credentials and no instance-metadata or config-file lookups."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": AWS_REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }


@contextmanager
def moto_behind_proxy() -> Iterator[FaultProxy]:
    """moto in server mode on loopback, a FaultProxy in front of it, and offline AWS settings."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in offline_aws_env().items():
            env.setenv(key, value)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        proxy = FaultProxy(f"{host}:{port}").start()
        try:
            yield proxy
        finally:
            proxy.stop()
            moto.stop()


class FaultProxy:
    """Forwards to `upstream` ("host:port"); `answer(operation, ...)` overrides one operation."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.answers: dict[str, Answer] = {}
        self.seen: list[str] = []  # operations in the order they arrived
        self.params: list[dict[str, list[str]]] = []  # their form parameters (query protocols)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, operation: str, answer: Answer) -> None:
        """Answer every `operation` request with `answer` until `clear()`."""
        with self._lock:
            self.answers[operation] = answer

    def clear(self) -> None:
        with self._lock:
            self.answers.clear()
            self.seen.clear()
            self.params.clear()

    def _override(self, operation: str, params: dict[str, list[str]]) -> Answer | None:
        with self._lock:
            self.seen.append(operation)
            self.params.append(params)
            return self.answers.get(operation)


def operation_of(headers: dict[str, str], params: dict[str, list[str]]) -> str:
    target = headers.get("x-amz-target")
    if target:
        return target.rsplit(".", 1)[-1]
    return params.get("Action", [""])[0]


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {key.lower(): value for key, value in self.headers.items()}
            form = "x-www-form-urlencoded" in headers.get("content-type", "")
            params = parse_qs(body.decode("utf-8", "replace")) if form else {}
            override = proxy._override(operation_of(headers, params), params)
            if override is not None:
                self._send(override.status, [("Content-Type", override.content_type)], override.body.encode())
                return
            upstream = http.client.HTTPConnection(proxy.upstream, timeout=30)
            try:
                upstream.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                reply = upstream.getresponse()
                payload = reply.read()
                passed = [(key, value) for key, value in reply.getheaders() if key.lower() not in NOT_PASSED]
                self._send(reply.status, passed, payload)
            finally:
                upstream.close()

        def _send(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _relay

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            pass

    return Handler
