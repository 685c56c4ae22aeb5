"""A loopback reverse proxy in front of moto that can answer chosen AWS operations itself.

moto launches whatever it is asked to and never runs out of capacity or quota, so the
refusals the capacity providers must handle cannot come from moto. boto3 talks to
this proxy instead (its `endpoint_url`); the proxy forwards every request to moto
unchanged, except operations a test has told it to answer, for which it returns the
response body AWS itself would send (e.g. EC2's error XML with HTTP 500 for
InsufficientInstanceCapacity). boto3 then parses that answer with its real parsers.

The operation is read the way AWS reads it: `Action=` in the form body for query
protocols (EC2), the `X-Amz-Target` header for JSON protocols (Service Quotas). An
answer may apply only to requests whose form parameters satisfy a predicate (e.g. only
spot launches); the others go to moto.

A spot interruption is made in moto's own state (`interrupt`: the instance terminated
with AWS's `Server.SpotInstanceTermination` state reason). The two-minute notice before
it, which moto cannot show because its RunInstances spot launches create no spot
request, is a DescribeSpotInstanceRequests answer from the proxy (`notice_interruption`).
ThreadedMotoServer runs in this process, so both work while another process (the
platform's capacity loop) talks to the proxy.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.ec2.models.instances import Instance, StateReason
from moto.server import ThreadedMotoServer

AWS_REGION = "us-east-1"

# Headers this proxy sets itself (or that describe the upstream connection, not the answer).
NOT_PASSED = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}
NOTICE_MESSAGE = "Your Spot Instance is marked for termination."

FormParams = dict[str, list[str]]  # a query-protocol request's form body, as parse_qs reads it


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


def spot_launch(params: FormParams) -> bool:
    """A `when` for RunInstances: the launch asks for spot capacity."""
    return params.get("InstanceMarketOptions.MarketType") == ["spot"]


def spot_requests_xml(zone_by_instance: Mapping[str, str], code: str, message: str) -> str:
    """A DescribeSpotInstanceRequests reply: one active one-time request per instance, all with status `code`."""
    items = "".join(
        f"<item><spotInstanceRequestId>sir-{instance_id.removeprefix('i-')[:8]}</spotInstanceRequestId>"
        "<spotPrice>0.9</spotPrice><type>one-time</type><state>active</state>"
        f"<status><code>{code}</code><updateTime>2026-11-22T15:00:00.000Z</updateTime>"
        f"<message>{message}</message></status>"
        f"<instanceId>{instance_id}</instanceId><productDescription>Linux/UNIX</productDescription>"
        f"<launchedAvailabilityZone>{zone}</launchedAvailabilityZone>"
        "<instanceInterruptionBehavior>terminate</instanceInterruptionBehavior></item>"
        for instance_id, zone in zone_by_instance.items()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<DescribeSpotInstanceRequestsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        "<requestId>59dbff89-35bd-4eac-99ed-be587EXAMPLE</requestId>"
        f"<spotInstanceRequestSet>{items}</spotInstanceRequestSet></DescribeSpotInstanceRequestsResponse>"
    )


def notice_interruption(proxy: FaultProxy, *instance_ids: str, region: str = AWS_REGION) -> None:
    """AWS's two-minute interruption notice for these spot instances: their spot requests report
    `marked-for-termination`. Replaces any earlier notice, so name every instance still noticed."""
    zones = {instance_id: _moto_instance(instance_id, region).availability_zone for instance_id in instance_ids}
    proxy.answer(
        "DescribeSpotInstanceRequests", Answer(200, spot_requests_xml(zones, "marked-for-termination", NOTICE_MESSAGE))
    )


def interrupt(instance_id: str, region: str = AWS_REGION) -> None:
    """What AWS does to an interrupted one-time spot instance: terminate it, saying why."""
    instance = _moto_instance(instance_id, region)
    instance.terminate()
    instance.state_reason = StateReason(
        "Server.SpotInstanceTermination: Spot instance termination", "Server.SpotInstanceTermination"
    )


def _moto_instance(instance_id: str, region: str) -> Instance:
    return ec2_backends[DEFAULT_ACCOUNT_ID][region].get_instance(instance_id)


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
    """moto in server mode on loopback, with an empty account, a FaultProxy in front of it, and
    offline AWS settings in this process's environment."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in offline_aws_env().items():
            env.setenv(key, value)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        proxy = FaultProxy(f"{host}:{port}").start()
        # moto's backends are this process's globals: start with none of an earlier context's instances.
        _reset_moto(proxy.upstream)
        try:
            yield proxy
        finally:
            proxy.stop()
            moto.stop()


def _reset_moto(upstream: str) -> None:
    connection = http.client.HTTPConnection(upstream, timeout=30)
    try:
        connection.request("POST", "/moto-api/reset")
        connection.getresponse().read()
    finally:
        connection.close()


@dataclass(frozen=True)
class Rule:
    answer: Answer
    when: Callable[[FormParams], bool] | None = None  # None: every request of the operation


class FaultProxy:
    """Forwards to `upstream` ("host:port"); `answer(operation, ...)` overrides one operation."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rules: dict[str, Rule] = {}  # operation -> how the proxy answers it
        self.seen: list[str] = []  # operations in the order they arrived
        self.params: list[FormParams] = []  # their form parameters (query protocols)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def upstream_url(self) -> str:
        """moto itself, for clients that must see no injected fault (and leave `seen` alone)."""
        return f"http://{self.upstream}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, operation: str, answer: Answer, when: Callable[[FormParams], bool] | None = None) -> None:
        """Answer `operation` requests with `answer` (only those whose form parameters satisfy
        `when`, if given; moto gets the others) until `clear()` or the operation's next `answer`."""
        with self._lock:
            self.rules[operation] = Rule(answer, when)

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.seen.clear()
            self.params.clear()

    def _override(self, operation: str, params: FormParams) -> Answer | None:
        with self._lock:
            self.seen.append(operation)
            self.params.append(params)
            rule = self.rules.get(operation)
        if rule is None or (rule.when is not None and not rule.when(params)):
            return None
        return rule.answer


def operation_of(headers: dict[str, str], params: FormParams) -> str:
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
