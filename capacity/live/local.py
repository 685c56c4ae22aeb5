"""The local "cloud": one region's Ray worker nodes on this machine, one `ray start`
process each, joined to the region's own cluster, labelled with the region and carrying
its `region:<slug>` resource.

`meridian up` starts a local region's first node through this provider, and the
region's capacity loop adds and removes more the same way. Its limits are real ones: a
node needs a free block of ports (`ray.spare_nodes` beyond the first), and there is no
spot market here, so a spot request is a stockout.
"""

from __future__ import annotations

import json
import subprocess
import time

from capacity.catalog import Catalog, Offering, Price
from capacity.model import (
    Accelerator,
    CapacityError,
    CapacityEvent,
    EventKind,
    Market,
    Node,
    NodeBusy,
    NodeState,
    Placement,
)
from meridian_core.spec import PlatformSpec, RegionSpec, region_resource
from meridian_host import processes
from meridian_host.platform_state import LocalNode, LocalNodes, PlatformState
from meridian_host.ray_nodes import (
    BIN,
    NODE_LABEL,
    REGION_LABEL,
    REGION_RESOURCE_CAPACITY,
    alive_nodes_labelled,
    nodes_running_actors,
    start_ray_node,
)
from meridian_host.region_tokens import dashboard_headers

JOIN_TIMEOUT_S = 120.0
# Local nodes cost nothing extra here; the catalog says so rather than leaving them unpriced.
LOCAL_PRICE = Price(0.0, None, "local machine")
# The deadline Ray is told for a drained node, and how long the drain call may take.
DRAIN_GRACE_S = 30


def instance_type(spec: PlatformSpec) -> str:
    return f"ray-{spec.ray.cpus_per_region_node}cpu"


def placement_for(spec: PlatformSpec, region: RegionSpec, market: Market = Market.ON_DEMAND) -> Placement:
    return Placement("local", region.slug, region.slug, instance_type(spec), market)


def local_catalog(spec: PlatformSpec, region: RegionSpec) -> Catalog:
    """One offering: a Ray node of `ray.cpus_per_region_node` CPUs, on demand."""
    offering = Offering(
        "local",
        region.slug,
        region.slug,
        instance_type(spec),
        Accelerator("cpu", 1, 0.0),
        float(spec.ray.cpus_per_region_node),
        0.0,
        on_demand=LOCAL_PRICE,
        spot=None,
    )
    return Catalog([offering])


class LocalProvider:
    cloud = "local"

    def __init__(
        self, spec: PlatformSpec, state: PlatformState, region: RegionSpec, join_timeout_s: float = JOIN_TIMEOUT_S
    ):
        self._spec = spec
        self._state = state
        self._region = region
        self._cluster = state.clusters[region.name]
        self._headers = dashboard_headers(state, self._cluster)
        self._join_timeout_s = join_timeout_s
        self._events: list[CapacityEvent] = []

    def acquire(self, placement: Placement, count: int = 1) -> list[Node]:
        if placement.region != self._region.slug:
            raise ValueError(f"{self._region.name}'s provider cannot place nodes in {placement.region}")
        if placement.market is Market.SPOT:
            raise CapacityError(CapacityEvent(EventKind.STOCKOUT, placement, time.time(), message="no spot market"))
        return [self._start(placement) for _ in range(count)]

    def release(self, node_id: str) -> None:
        """Drain the node through Ray, then stop it; NodeBusy if anything runs on it.

        A busy node is not even asked to drain: Serve moves replicas off a node marked
        draining, and a replica must end by scaling down, not by eviction."""
        held = self._held()
        record = held.nodes[node_id]
        alive = alive_nodes_labelled(self._cluster.dashboard_url, NODE_LABEL, self._headers)
        if alive is None:
            raise NodeBusy(f"cannot tell whether {node_id} runs actors: Ray's state API did not answer")
        ray_node = alive.get(node_id)
        if ray_node is not None:
            busy = nodes_running_actors(self._cluster.dashboard_url, self._headers)
            if busy is None or ray_node in busy:
                raise NodeBusy(f"{node_id} still runs actors")
            self._drain(ray_node, node_id)
        del held.nodes[node_id]
        processes.terminate_group(record.pid)
        self._keep(held)
        self._events.append(CapacityEvent(EventKind.TERMINATED, self._placement(), time.time(), node_id))

    def nodes(self) -> list[Node]:
        held = self._held()
        nodes = []
        for node_id, record in list(held.nodes.items()):
            if not processes.is_running_since(record.pid, record.launched_at_s):
                # Nobody asked for this: the local equivalent of losing a spot node.
                del held.nodes[node_id]
                self._keep(held)
                event = CapacityEvent(EventKind.PREEMPTED, self._placement(), time.time(), node_id, "exited")
                self._events.append(event)
                continue
            nodes.append(Node(node_id, self._placement(), NodeState.RUNNING, record.launched_at_s, ray_label=node_id))
        return nodes

    def events(self) -> list[CapacityEvent]:
        events, self._events = self._events, []
        return events

    def _held(self) -> LocalNodes:
        return LocalNodes.load(self._state, self._region.slug)

    def _keep(self, held: LocalNodes) -> None:
        held.save(self._state, self._region.slug)

    def _placement(self) -> Placement:
        return placement_for(self._spec, self._region)

    def _free_block(self, held: LocalNodes, placement: Placement) -> int:
        used = {record.block for record in held.nodes.values()}
        blocks = self._spec.cluster_ports(self._region).node_blocks
        for block in blocks:
            if block not in used:
                return block
        raise CapacityError(
            CapacityEvent(
                EventKind.STOCKOUT,
                placement,
                time.time(),
                message=f"all {len(blocks)} node port blocks are in use; raise ray.spare_nodes",
            )
        )

    def _start(self, placement: Placement) -> Node:
        held = self._held()
        block = self._free_block(held, placement)
        slug = self._region.slug
        node_id = f"{slug}-{block}"
        pid = start_ray_node(
            self._spec,
            self._state,
            self._cluster,
            block_index=block,
            log_name=f"ray-{node_id}",
            role_args=[
                "--address",
                self._cluster.gcs_address,
                "--num-cpus",
                str(self._spec.ray.cpus_per_region_node),
                "--resources",
                json.dumps({region_resource(slug): REGION_RESOURCE_CAPACITY}),
                "--labels",
                f"{REGION_LABEL}={slug},{NODE_LABEL}={node_id}",
            ],  # fmt: skip
        )
        launched = time.time()
        held.nodes[node_id] = LocalNode(pid=pid, block=block, launched_at_s=launched)
        self._keep(held)
        deadline = time.monotonic() + self._join_timeout_s
        while node_id not in (alive_nodes_labelled(self._cluster.dashboard_url, NODE_LABEL, self._headers) or {}):
            if time.monotonic() > deadline or not processes.is_running(pid):
                del held.nodes[node_id]
                processes.terminate_group(pid)
                self._keep(held)
                log = self._state.logs_dir / f"ray-{node_id}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
                raise RuntimeError(f"Ray node {node_id} did not join the cluster; {log}:\n{tail}")
            time.sleep(0.5)
        self._events.append(CapacityEvent(EventKind.LAUNCHED, placement, launched, node_id))
        return Node(node_id, placement, NodeState.RUNNING, launched, ray_label=node_id)

    def _drain(self, ray_node_id: str, node_id: str) -> None:
        """Ask Ray to drain the node for idle termination, which it grants only to a node
        with nothing running; from then on it schedules nothing there."""
        result = subprocess.run(
            [
                str(BIN / "ray"),
                "drain-node",
                "--address",
                self._cluster.gcs_address,
                "--node-id",
                ray_node_id,
                "--reason",
                "DRAIN_NODE_REASON_IDLE_TERMINATION",
                "--reason-message",
                f"meridian releases {node_id}",
                "--deadline-remaining-seconds",
                str(DRAIN_GRACE_S),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=DRAIN_GRACE_S,
        )
        if result.returncode != 0:
            raise NodeBusy(f"Ray did not drain {node_id}: {(result.stderr or result.stdout).strip()[-300:]}")
