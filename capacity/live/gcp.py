"""GCP Compute Engine nodes for one Meridian region, through google-cloud-compute.

Ownership is by label: instances carry `meridian-managed=true` and
`meridian-platform=<platform>`; `nodes()` filters on both and checks them again, and
`release()` refuses (KeyError) anything without them. A node's id is `<zone>/<name>`,
which is what the Compute API needs to find it again.

Spot VMs are inserted with `scheduling.provisioningModel=SPOT` and
`instanceTerminationAction=DELETE`; the Ray join script goes in the `startup-script`
metadata item. Each insert or delete is followed by `zoneOperations.wait` until the
operation is DONE. Refusals become `CapacityError`s, whether GCE reports them in the
DONE operation's `error.errors[].code` (the usual way for stockouts) or as an HTTP
error from the insert itself (the usual way for quota):
`ZONE_RESOURCE_POOL_EXHAUSTED[_WITH_DETAILS]` is a STOCKOUT, `QUOTA_EXCEEDED` (HTTP
reason `quotaExceeded`) is QUOTA_EXCEEDED.

`events()` reads the `compute.instances.preempted` zone operations that name this
provider's nodes, plus LAUNCHED/TERMINATED for its own acquisitions and releases. GCE
starts that operation when it sends the VM its preemption signal and finishes it when the
VM stops, up to 30 s later: an operation not yet DONE is a PREEMPTION_NOTICE (the node is
DRAINING, RUNNING or STOPPING, until it goes), a DONE one is PREEMPTED. The poll may miss
a short notice; then PREEMPTED is the first word. Accelerator-optimized machine types (a2, a3, g2) come with their
GPUs; N1 + guest accelerators are not supported here.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import requests
from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from google.cloud import compute_v1

from capacity.live.bootstrap import RayJoin, ray_join_script
from capacity.model import CapacityError, CapacityEvent, EventKind, Market, Node, NodeState, Placement, ProviderError

MANAGED_LABEL = "meridian-managed"
PLATFORM_LABEL = "meridian-platform"
REGION_LABEL = "meridian-region"
PREEMPTED_OPERATION = "compute.instances.preempted"

STOCKOUT_CODES = frozenset({"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"})
QUOTA_CODES = frozenset({"QUOTA_EXCEEDED"})
LIVE_STATES = {
    "PROVISIONING": NodeState.PENDING,
    "STAGING": NodeState.PENDING,
    "RUNNING": NodeState.RUNNING,
}
# A warned VM keeps serving while GCE stops it.
WARNED_STATES = frozenset({"RUNNING", "STOPPING"})


class GcpOperationError(RuntimeError):
    """A zone operation that finished with errors other than capacity refusals."""


P = ParamSpec("P")
R = TypeVar("R")


def _sdk_errors_named(call: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Compute errors that are not capacity refusals become a ProviderError naming `call`."""

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def calling(*args: P.args, **kwargs: P.kwargs) -> R:
            where = f"gcp/{args[0].region}"  # type: ignore[attr-defined]
            try:
                return method(*args, **kwargs)
            except google_exceptions.GoogleAPICallError as error:
                raise ProviderError(where, call, f"{error.code} {type(error).__name__}") from None
            except (auth_exceptions.GoogleAuthError, google_exceptions.RetryError) as error:
                raise ProviderError(where, call, type(error).__name__) from None
            except requests.RequestException as error:  # the REST transport's own: an endpoint that does not answer
                raise ProviderError(where, call, type(error).__name__) from None

        return calling

    return decorate


class GcpProvider:
    """Inserts, lists and deletes one region's Meridian nodes on Compute Engine."""

    cloud = "gcp"

    def __init__(
        self,
        *,
        project: str,
        region: str,
        platform: str,
        join: RayJoin,
        source_image: str,  # e.g. "projects/<p>/global/images/family/<family>"
        network: str = "global/networks/default",
        boot_disk_gb: int = 200,
        credentials: Credentials | None = None,
        client_options: Mapping[str, Any] | None = None,
        operation_timeout_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.project = project
        self.region = region
        self.platform = platform
        self.join = join
        self.source_image = source_image
        self.network = network
        self.boot_disk_gb = boot_disk_gb
        self.operation_timeout_s = operation_timeout_s
        self._clock = clock
        options = dict(client_options or {})
        self._instances = compute_v1.InstancesClient(credentials=credentials, client_options=options)
        self._operations = compute_v1.ZoneOperationsClient(credentials=credentials, client_options=options)
        self._regions = compute_v1.RegionsClient(credentials=credentials, client_options=options)
        self._zones: list[str] | None = None
        self._known: dict[str, Placement] = {}  # node id -> placement, for nodes GCE may already have deleted
        self._seen_operations: set[str] = set()  # DONE preemptions already reported
        self._noticed: set[str] = set()  # node ids warned of a preemption
        self._queued: list[CapacityEvent] = []

    @_sdk_errors_named("instances.insert")
    def acquire(self, placement: Placement, count: int = 1) -> list[Node]:
        """Insert up to `count` instances one by one; stop at the first refusal."""
        if placement.cloud != self.cloud or placement.region != self.region:
            raise ValueError(f"{self.cloud}/{self.region} provider cannot place {placement}")
        nodes: list[Node] = []
        for _ in range(count):
            try:
                nodes.append(self._insert(placement))
            except CapacityError:
                if not nodes:
                    raise
                break
        now = self._clock()
        self._queued.extend(CapacityEvent(EventKind.LAUNCHED, node.placement, now, node.id) for node in nodes)
        return nodes

    @_sdk_errors_named("instances.delete")
    def release(self, node_id: str) -> None:
        zone, name = self._split(node_id)
        try:
            instance = self._instances.get(project=self.project, zone=zone, instance=name)
        except google_exceptions.NotFound as error:
            raise KeyError(node_id) from error
        if not self._owns(instance):
            raise KeyError(f"{node_id} is not a Meridian node of platform {self.platform!r}")
        operation = self._instances.delete_unary(project=self.project, zone=zone, instance=name)
        self._wait(zone, operation)
        self._queued.append(
            CapacityEvent(EventKind.TERMINATED, self._placement(zone, instance), self._clock(), node_id)
        )

    @_sdk_errors_named("instances.list")
    def nodes(self) -> list[Node]:
        found = []
        for zone in self.zones():
            request = compute_v1.ListInstancesRequest(
                project=self.project,
                zone=zone,
                filter=f'(labels.{MANAGED_LABEL} = "true") (labels.{PLATFORM_LABEL} = "{self.platform}")',
            )
            for instance in self._instances.list(request=request):
                warned = f"{zone}/{instance.name}" in self._noticed and instance.status in WARNED_STATES
                if self._owns(instance) and (instance.status in LIVE_STATES or warned):
                    node = self._node(zone, instance)
                    self._known[node.id] = node.placement
                    found.append(node)
        return found

    @_sdk_errors_named("instances.list")
    def events(self) -> list[CapacityEvent]:
        self.nodes()  # learn the placements of nodes launched before this provider started
        observed = []
        for zone in self.zones():
            request = compute_v1.ListZoneOperationsRequest(
                project=self.project, zone=zone, filter=f'operationType = "{PREEMPTED_OPERATION}"'
            )
            for operation in self._operations.list(request=request):
                node_id = f"{zone}/{operation.target_link.rsplit('/', 1)[-1]}"
                if node_id not in self._known or operation.name in self._seen_operations:
                    continue
                if operation.status != compute_v1.Operation.Status.DONE:
                    if node_id in self._noticed:
                        continue
                    self._noticed.add(node_id)
                    kind, message = EventKind.PREEMPTION_NOTICE, f"{PREEMPTED_OPERATION} started"
                else:
                    self._seen_operations.add(operation.name)
                    self._noticed.discard(node_id)
                    kind, message = EventKind.PREEMPTED, operation.status_message or PREEMPTED_OPERATION
                observed.append(CapacityEvent(kind, self._known[node_id], self._clock(), node_id, message))
        events, self._queued = self._queued + observed, []
        return events

    def zones(self) -> list[str]:
        """The region's zones, read once from `regions.get`."""
        if self._zones is None:
            region = self._regions.get(project=self.project, region=self.region)
            self._zones = sorted(url.rsplit("/", 1)[-1] for url in region.zones)
        return self._zones

    def _insert(self, placement: Placement) -> Node:
        name = f"meridian-{self.join.region_slug}-{uuid.uuid4().hex[:10]}"[:63]
        try:
            operation = self._instances.insert_unary(
                project=self.project, zone=placement.zone, instance_resource=self._instance(name, placement)
            )
        except google_exceptions.GoogleAPICallError as error:
            kind = _refusal_kind_of_http_error(error)
            if kind is None:
                raise
            message = _without_request_line(error.message or "")
            raise CapacityError(CapacityEvent(kind, placement, self._clock(), message=message)) from error
        done = self._wait(placement.zone, operation)
        if done.error.errors:
            codes = [error.code for error in done.error.errors]
            message = "; ".join(f"{error.code}: {error.message}" for error in done.error.errors)
            kind = refusal_kind(codes)
            if kind is None:
                raise GcpOperationError(f"insert {name} in {placement.zone} failed: {message}")
            raise CapacityError(CapacityEvent(kind, placement, self._clock(), message=message))
        instance = self._instances.get(project=self.project, zone=placement.zone, instance=name)
        node = self._node(placement.zone, instance)
        self._known[node.id] = node.placement
        return node

    def _instance(self, name: str, placement: Placement) -> compute_v1.Instance:
        script = ray_join_script(
            self.join, cloud=self.cloud, zone=placement.zone, market=placement.market, node_label=name
        )
        if placement.market is Market.SPOT:
            scheduling = compute_v1.Scheduling(
                provisioning_model="SPOT",
                instance_termination_action="DELETE",
                on_host_maintenance="TERMINATE",
                automatic_restart=False,
            )
        else:
            # GPU VMs cannot live-migrate: they stop for host maintenance and come back.
            scheduling = compute_v1.Scheduling(
                provisioning_model="STANDARD", on_host_maintenance="TERMINATE", automatic_restart=True
            )
        return compute_v1.Instance(
            name=name,
            machine_type=f"zones/{placement.zone}/machineTypes/{placement.instance_type}",
            labels={MANAGED_LABEL: "true", PLATFORM_LABEL: self.platform, REGION_LABEL: self.join.region_slug},
            scheduling=scheduling,
            metadata=compute_v1.Metadata(items=[compute_v1.Items(key="startup-script", value=script)]),
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=self.source_image, disk_size_gb=self.boot_disk_gb
                    ),
                )
            ],
            network_interfaces=[compute_v1.NetworkInterface(network=self.network)],
        )

    def _wait(self, zone: str, operation: compute_v1.Operation) -> compute_v1.Operation:
        """`zoneOperations.wait` until DONE; each call returns when done or after about two minutes."""
        deadline = time.monotonic() + self.operation_timeout_s
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"operation {operation.name} in {zone} not done after {self.operation_timeout_s} s")
            operation = self._operations.wait(project=self.project, zone=zone, operation=operation.name)
        return operation

    def _owns(self, instance: compute_v1.Instance) -> bool:
        labels = dict(instance.labels)
        return labels.get(MANAGED_LABEL) == "true" and labels.get(PLATFORM_LABEL) == self.platform

    def _split(self, node_id: str) -> tuple[str, str]:
        zone, _, name = node_id.partition("/")
        if not name or zone not in self.zones():
            raise KeyError(f"{node_id} is not a <zone>/<name> id in {self.region}")
        return zone, name

    def _placement(self, zone: str, instance: compute_v1.Instance) -> Placement:
        market = Market.SPOT if instance.scheduling.provisioning_model == "SPOT" else Market.ON_DEMAND
        return Placement(self.cloud, self.region, zone, instance.machine_type.rsplit("/", 1)[-1], market)

    def _node(self, zone: str, instance: compute_v1.Instance) -> Node:
        node_id = f"{zone}/{instance.name}"
        state = LIVE_STATES.get(instance.status, NodeState.TERMINATED)
        if node_id in self._noticed and instance.status in WARNED_STATES:
            state = NodeState.DRAINING
        launched = datetime.fromisoformat(instance.creation_timestamp).timestamp()
        return Node(node_id, self._placement(zone, instance), state, launched, ray_label=instance.name)


def refusal_kind(codes: list[str]) -> EventKind | None:
    """The typed reason behind a failed operation's error codes, or None if not a refusal."""
    if any(code in STOCKOUT_CODES for code in codes):
        return EventKind.STOCKOUT
    if any(code in QUOTA_CODES for code in codes):
        return EventKind.QUOTA_EXCEEDED
    return None


def _without_request_line(message: str) -> str:
    """The API's own words without the request line the REST transport puts first
    (`POST https://<endpoint>/compute/v1/...: `): an endpoint is not for logs or reports."""
    return re.sub(r"^[A-Z]+ \S+: ", "", message)


def _refusal_kind_of_http_error(error: google_exceptions.GoogleAPICallError) -> EventKind | None:
    reasons = [str(item.get("reason", "")) for item in error.errors or [] if isinstance(item, dict)]
    if "quotaExceeded" in reasons:
        return EventKind.QUOTA_EXCEEDED
    return refusal_kind([code for code in (*STOCKOUT_CODES, *QUOTA_CODES) if code in (error.message or "")])
