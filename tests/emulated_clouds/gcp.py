"""A small local Compute Engine REST endpoint, for google-cloud-compute pointed at loopback.

Implements the calls the GCP provider, quota and price readers make, with the JSON
shapes of the real API (https://cloud.google.com/compute/docs/reference/rest/v1):
instances insert/get/list/delete, zoneOperations get/wait/list, regions get, and the
Cloud Billing Catalog's services.skus.list
(https://cloud.google.com/billing/docs/reference/rest/v1/services.skus/list).

Operations start PENDING and are DONE after `polls_until_done` further get/wait calls,
so a caller that does not wait sees no instance. Faults are injected here directly:
`refuse_inserts` fails inserts as GCE does (a DONE operation carrying the error, the usual
way for a `stockout`, or an immediate HTTP error, the usual way for `quota_exceeded`),
optionally only those a predicate picks (e.g. `spot_insert`); `preempt` takes a spot VM
away and records the `compute.instances.preempted` operation GCE emits.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

BASE = "https://www.googleapis.com/compute/v1"


def now_rfc3339() -> str:
    """The time now as GCE writes it (RFC 3339 with its offset): instances and operations are stamped when made."""
    return datetime.now(timezone(timedelta(hours=-8))).isoformat(timespec="milliseconds")


InsertFilter = Callable[[str, dict[str, Any]], bool]  # (zone, insert body) -> does a refusal apply


@dataclass(frozen=True)
class Refusal:
    code: str  # e.g. ZONE_RESOURCE_POOL_EXHAUSTED, QUOTA_EXCEEDED
    message: str
    http_status: int  # of the operation's httpErrorStatusCode, or of the immediate reply
    immediate: bool = False  # an HTTP error from insert itself rather than a failed operation


def stockout() -> Refusal:
    """A zone out of capacity: the insert's operation finishes with ZONE_RESOURCE_POOL_EXHAUSTED."""
    message = "The zone does not have enough resources available to fulfill the request. Try a different zone."
    return Refusal("ZONE_RESOURCE_POOL_EXHAUSTED", message, 503)


def quota_exceeded(metric: str, region: str) -> Refusal:
    """A regional quota at its limit: the insert itself fails with HTTP 403, reason `quotaExceeded`."""
    return Refusal("QUOTA_EXCEEDED", f"Quota '{metric}' exceeded.  Limit: 0.0 in region {region}.", 403, immediate=True)


def spot_insert(zone: str, body: dict[str, Any]) -> bool:
    """An `InsertFilter`: the insert asks for a spot VM."""
    return body.get("scheduling", {}).get("provisioningModel") == "SPOT"


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason

    def body(self) -> dict[str, Any]:
        domain = "usageLimits" if self.reason == "quotaExceeded" else "global"
        error = {"message": self.message, "domain": domain, "reason": self.reason}
        return {"error": {"code": self.status, "message": self.message, "errors": [error]}}


@dataclass
class FakeComputeApi:
    project: str
    zones_by_region: dict[str, list[str]]
    quotas_by_region: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    skus: list[dict[str, Any]] = field(default_factory=list)
    sku_page_size: int = 2
    polls_until_done: int = 1
    refusal: Refusal | None = None
    refused_only: InsertFilter | None = None  # None: the refusal applies to every insert
    inserted: list[dict[str, Any]] = field(default_factory=list)  # insert bodies, as received
    instances: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    operations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)  # operation name -> get/wait calls

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1000)
        self._pending: dict[str, tuple[int, Any]] = {}  # operation -> (polls left, what DONE does)
        self._allowed = 0  # inserts that still succeed before `refusal` applies
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeComputeApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def refuse_inserts(self, refusal: Refusal | None, after: int = 0, when: InsertFilter | None = None) -> None:
        """Refuse every insert (every one `when` picks, if given) after the next `after` such
        ones, until called with None."""
        with self._lock:
            self.refusal = refusal
            self.refused_only = when
            self._allowed = after

    def instances_snapshot(self) -> dict[tuple[str, str], dict[str, Any]]:
        """A copy of every instance by (zone, name), as consistent as one API call's view."""
        with self._lock:
            return copy.deepcopy(self.instances)

    def warn_of_preemption(self, zone: str, name: str) -> None:
        """What GCE does when it starts reclaiming a spot VM: the preemption operation runs
        and the VM stops, for up to 30 s, until `preempt`."""
        with self._lock:
            instance = self.instances[(zone, name)]
            instance["status"] = "STOPPING"
            operation = self._operation(zone, "compute.instances.preempted", instance, user="system@google.com")
            operation.update(status="RUNNING", progress=0)

    def preempt(self, zone: str, name: str) -> None:
        """What GCE does to a spot VM it reclaims: stop or delete it, and say so in an operation
        (the one `warn_of_preemption` started, or a new one)."""
        with self._lock:
            instance = self.instances[(zone, name)]
            if instance["scheduling"].get("instanceTerminationAction") == "STOP":
                instance["status"] = "TERMINATED"
            else:
                del self.instances[(zone, name)]
            running = [
                operation
                for operation in self.operations.values()
                if operation["operationType"] == "compute.instances.preempted"
                and operation["targetLink"] == instance["selfLink"]
                and operation["status"] != "DONE"
            ]
            operation = (
                running[0]
                if running
                else self._operation(zone, "compute.instances.preempted", instance, user="system@google.com")
            )
            done_at = now_rfc3339()
            operation.update(status="DONE", progress=100, statusMessage="Instance was preempted.", endTime=done_at)

    # Each route returns the JSON body; errors are ApiError.

    def route(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            for pattern, verb, handler in self._routes():
                match = re.fullmatch(pattern, path)
                if match and verb == method:
                    if "project" in match.groupdict() and match["project"] != self.project:
                        raise ApiError(403, f"Project {match['project']} not found or access denied", "forbidden")
                    return handler(query=query, body=body, **{k: v for k, v in match.groupdict().items()})
        raise ApiError(404, f"The requested URL {path} was not found on this server.", "notFound")

    def _routes(self) -> list[tuple[str, str, Any]]:
        zone = r"/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)"
        return [
            (zone + "/instances", "POST", self._insert),
            (zone + "/instances", "GET", self._list_instances),
            (zone + "/instances/(?P<name>[^/]+)", "GET", self._get_instance),
            (zone + "/instances/(?P<name>[^/]+)", "DELETE", self._delete_instance),
            (zone + "/operations", "GET", self._list_operations),
            (zone + "/operations/(?P<name>[^/]+)", "GET", self._poll),
            (zone + "/operations/(?P<name>[^/]+)/wait", "POST", self._poll),
            (r"/compute/v1/projects/(?P<project>[^/]+)/regions/(?P<region>[^/]+)", "GET", self._region),
            (r"/v1/services/(?P<service>[^/]+)/skus", "GET", self._skus),
        ]

    def _insert(self, project: str, zone: str, query: dict, body: dict[str, Any]) -> dict[str, Any]:
        self.inserted.append(body)
        self._known_zone(zone)
        refusal = self.refusal
        if refusal and self.refused_only and not self.refused_only(zone, body):
            refusal = None
        if refusal and self._allowed > 0:
            self._allowed -= 1
            refusal = None
        if refusal and refusal.immediate:
            raise ApiError(refusal.http_status, refusal.message, _reason(refusal.code))
        name = body["name"]
        if (zone, name) in self.instances:
            raise ApiError(
                409, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists", "alreadyExists"
            )
        instance = {
            **body,
            "kind": "compute#instance",
            "id": str(next(self._ids)),
            "status": "PROVISIONING",
            "zone": f"{BASE}/projects/{project}/zones/{zone}",
            "selfLink": f"{BASE}/projects/{project}/zones/{zone}/instances/{name}",
            "creationTimestamp": now_rfc3339(),
        }
        operation = self._operation(zone, "insert", instance)
        if refusal:
            done = lambda: _fail(operation, refusal)  # noqa: E731
        else:
            self.instances[(zone, name)] = instance
            done = lambda: instance.update(status="RUNNING")  # noqa: E731
        self._pending[operation["name"]] = (self.polls_until_done, done)
        return operation

    def _delete_instance(self, project: str, zone: str, name: str, query: dict, body: dict) -> dict[str, Any]:
        instance = self._instance(project, zone, name)
        instance["status"] = "STOPPING"
        operation = self._operation(zone, "delete", instance)
        self._pending[operation["name"]] = (self.polls_until_done, lambda: self.instances.pop((zone, name), None))
        return operation

    def _get_instance(self, project: str, zone: str, name: str, query: dict, body: dict) -> dict[str, Any]:
        return self._instance(project, zone, name)

    def _list_instances(self, project: str, zone: str, query: dict[str, list[str]], body: dict) -> dict[str, Any]:
        self._known_zone(zone)
        wanted = label_filter(query.get("filter", [""])[0])
        items = [
            instance
            for (at, _), instance in self.instances.items()
            if at == zone and all(instance.get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        return {"kind": "compute#instanceList", "id": f"projects/{project}/zones/{zone}/instances", "items": items}

    def _list_operations(self, project: str, zone: str, query: dict[str, list[str]], body: dict) -> dict[str, Any]:
        match = re.fullmatch(r'\s*operationType\s*=\s*"([^"]+)"\s*', query.get("filter", [""])[0])
        items = [
            operation
            for (at, _), operation in self.operations.items()
            if at == zone and (match is None or operation["operationType"] == match[1])
        ]
        return {"kind": "compute#operationList", "id": f"projects/{project}/zones/{zone}/operations", "items": items}

    def _poll(self, project: str, zone: str, name: str, query: dict, body: dict) -> dict[str, Any]:
        if (zone, name) not in self.operations:
            raise ApiError(
                404, f"The resource 'projects/{project}/zones/{zone}/operations/{name}' was not found", "notFound"
            )
        self.polls[name] = self.polls.get(name, 0) + 1
        operation = self.operations[(zone, name)]
        if name in self._pending:
            left, done = self._pending.pop(name)
            if left > 0:
                self._pending[name] = (left - 1, done)
            else:
                done()
                operation.update(status="DONE", progress=100, endTime=now_rfc3339())
        return operation

    def _region(self, project: str, region: str, query: dict, body: dict) -> dict[str, Any]:
        if region not in self.zones_by_region:
            raise ApiError(404, f"The resource 'projects/{project}/regions/{region}' was not found", "notFound")
        return {
            "kind": "compute#region",
            "id": str(abs(hash(region)) % 10**6),
            "name": region,
            "status": "UP",
            "zones": [f"{BASE}/projects/{project}/zones/{zone}" for zone in self.zones_by_region[region]],
            "quotas": self.quotas_by_region.get(region, []),
            "selfLink": f"{BASE}/projects/{project}/regions/{region}",
        }

    def _skus(self, service: str, query: dict[str, list[str]], body: dict) -> dict[str, Any]:
        start = int(query.get("pageToken", ["0"])[0] or 0)
        page = self.skus[start : start + self.sku_page_size]
        more = start + self.sku_page_size < len(self.skus)
        return {"skus": page, "nextPageToken": str(start + self.sku_page_size) if more else ""}

    def _instance(self, project: str, zone: str, name: str) -> dict[str, Any]:
        if (zone, name) not in self.instances:
            raise ApiError(
                404, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found", "notFound"
            )
        return self.instances[(zone, name)]

    def _known_zone(self, zone: str) -> None:
        if not any(zone in zones for zones in self.zones_by_region.values()):
            raise ApiError(400, f"Invalid value for field 'zone': '{zone}'. Unknown zone.", "invalid")

    def _operation(
        self, zone: str, kind: str, target: dict[str, Any], user: str = "meridian@example.iam"
    ) -> dict[str, Any]:
        number = next(self._ids)
        name = f"operation-{number}-5e9a7c1b2d3f4-a1b2c3d4-e5f6a7b8"
        operation = {
            "kind": "compute#operation",
            "id": str(number),
            "name": name,
            "zone": f"{BASE}/projects/{self.project}/zones/{zone}",
            "operationType": kind,
            "targetLink": target["selfLink"],
            "targetId": target["id"],
            "status": "PENDING",
            "user": user,
            "progress": 0,
            "insertTime": now_rfc3339(),
            "startTime": now_rfc3339(),
            "selfLink": f"{BASE}/projects/{self.project}/zones/{zone}/operations/{name}",
        }
        self.operations[(zone, name)] = operation
        return operation


def label_filter(expression: str) -> dict[str, str]:
    """`labels.KEY = "VALUE"` terms (implicitly ANDed, as GCE's list filter does); others are errors."""
    terms = re.findall(r'\(?\s*labels\.([a-z0-9_-]+)\s*=\s*"([^"]*)"\s*\)?', expression)
    leftover = re.sub(r'\(?\s*labels\.([a-z0-9_-]+)\s*=\s*"([^"]*)"\s*\)?|\bAND\b', "", expression).strip()
    if leftover:
        raise ApiError(400, f"Invalid list filter expression '{expression}'.", "invalid")
    return dict(terms)


def _reason(code: str) -> str:
    return {"QUOTA_EXCEEDED": "quotaExceeded"}.get(code, code)


def _fail(operation: dict[str, Any], refusal: Refusal) -> None:
    operation.update(
        error={"errors": [{"code": refusal.code, "message": refusal.message}]},
        httpErrorStatusCode=refusal.http_status,
        httpErrorMessage={503: "SERVICE UNAVAILABLE", 403: "FORBIDDEN"}.get(refusal.http_status, "ERROR"),
    )


def _handler(api: FakeComputeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            url = urlparse(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                reply, status = api.route(self.command, url.path, parse_qs(url.query), json.loads(raw or b"{}")), 200
            except ApiError as error:
                reply, status = error.body(), error.status
            payload = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            pass

    return Handler
