"""The local "cloud": Ray worker nodes on this machine, one `ray start` process each,
labelled with their region and carrying its `region:<slug>` resource.

`meridian up` starts every region's first node through this provider, and the
capacity loop adds and removes more the same way. Its limits are real ones: a node
needs a free block of ports (`ray.spare_nodes` beyond one per region), and there is
no spot market here, so a spot request is a stockout.
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
from meridian_host.platform_state import PlatformState
from meridian_host.ray_nodes import (
    BIN,
    NODE_LABEL,
    REGION_LABEL,
    REGION_RESOURCE_CAPACITY,
    alive_nodes_labelled,
    nodes_running_actors,
    start_ray_node,
)

JOIN_TIMEOUT_S = 120.0
# Local nodes cost nothing extra here; the catalog says so rather than leaving them unpriced.
LOCAL_PRICE = Price(0.0, None, "local machine")
# The deadline Ray is told for a drained node, and how long the drain call may take.
DRAIN_GRACE_S = 30


def instance_type(spec: PlatformSpec) -> str:
    return f"ray-{spec.ray.cpus_per_region_node}cpu"


def placement_for(spec: PlatformSpec, region: RegionSpec, market: Market = Market.ON_DEMAND) -> Placement:
    return Placement("local", region.slug, region.slug, instance_type(spec), market)


def local_catalog(spec: PlatformSpec) -> Catalog:
    """One offering per region: a Ray node of `ray.cpus_per_region_node` CPUs, on demand."""
    return Catalog(
        Offering(
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
        for region in spec.regions
    )


class LocalProvider:
    cloud = "local"

    def __init__(self, spec: PlatformSpec, state: PlatformState, join_timeout_s: float = JOIN_TIMEOUT_S):
        self._spec = spec
        self._state = state
        self._join_timeout_s = join_timeout_s
        self._events: list[CapacityEvent] = []

    def acquire(self, placement: Placement, count: int = 1) -> list[Node]:
        region = self._spec.region(placement.region)
        if placement.market is Market.SPOT:
            raise CapacityError(CapacityEvent(EventKind.STOCKOUT, placement, time.time(), message="no spot market"))
        return [self._start(region, placement) for _ in range(count)]

    def release(self, node_id: str) -> None:
        """Drain the node through Ray, then stop it; NodeBusy if anything runs on it.

        A busy node is not even asked to drain: Serve moves replicas off a node marked
        draining, and a replica must end by scaling down, not by eviction."""
        record = self._state.local_nodes[node_id]
        ray_node = alive_nodes_labelled(self._state, NODE_LABEL).get(node_id)
        if ray_node is not None:
            busy = nodes_running_actors(self._state)
            if busy is None or ray_node in busy:
                raise NodeBusy(f"{node_id} still runs actors")
            self._drain(ray_node, node_id)
        del self._state.local_nodes[node_id]
        processes.terminate_group(record["pid"])
        self._state.save()
        self._events.append(CapacityEvent(EventKind.TERMINATED, self._placement(record), time.time(), node_id))

    def nodes(self) -> list[Node]:
        nodes = []
        for node_id, record in list(self._state.local_nodes.items()):
            if not processes.is_running(record["pid"]):
                # Nobody asked for this: the local equivalent of losing a spot node.
                del self._state.local_nodes[node_id]
                self._state.save()
                event = CapacityEvent(EventKind.PREEMPTED, self._placement(record), time.time(), node_id, "exited")
                self._events.append(event)
                continue
            nodes.append(Node(node_id, self._placement(record), NodeState.RUNNING, record["launched_at_s"]))
        return nodes

    def events(self) -> list[CapacityEvent]:
        events, self._events = self._events, []
        return events

    def _placement(self, record: dict) -> Placement:
        region = self._spec.region(record["region"])
        return placement_for(self._spec, region)

    def _free_index(self, placement: Placement) -> int:
        used = {record["index"] for record in self._state.local_nodes.values()}
        last = len(self._spec.regions) + self._spec.ray.spare_nodes
        for index in range(1, last + 1):
            if index not in used:
                return index
        raise CapacityError(
            CapacityEvent(
                EventKind.STOCKOUT,
                placement,
                time.time(),
                message=f"all {last} node port blocks are in use; raise ray.spare_nodes",
            )
        )

    def _start(self, region: RegionSpec, placement: Placement) -> Node:
        index = self._free_index(placement)
        node_id = f"{region.slug}-{index}"
        pid = start_ray_node(
            self._spec,
            self._state,
            node_index=index,
            log_name=f"ray-{node_id}",
            role_args=[
                "--address",
                self._state.gcs_address,
                "--num-cpus",
                str(self._spec.ray.cpus_per_region_node),
                "--resources",
                json.dumps({region_resource(region.slug): REGION_RESOURCE_CAPACITY}),
                "--labels",
                f"{REGION_LABEL}={region.slug},{NODE_LABEL}={node_id}",
            ],  # fmt: skip
        )
        launched = time.time()
        self._state.local_nodes[node_id] = {
            "pid": pid,
            "region": region.slug,
            "index": index,
            "launched_at_s": launched,
        }
        self._state.save()
        deadline = time.monotonic() + self._join_timeout_s
        while node_id not in alive_nodes_labelled(self._state, NODE_LABEL):
            if time.monotonic() > deadline or not processes.is_running(pid):
                del self._state.local_nodes[node_id]
                processes.terminate_group(pid)
                self._state.save()
                log = self._state.logs_dir / f"ray-{node_id}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
                raise RuntimeError(f"Ray node {node_id} did not join the cluster; {log}:\n{tail}")
            time.sleep(0.5)
        self._events.append(CapacityEvent(EventKind.LAUNCHED, placement, launched, node_id))
        return Node(node_id, placement, NodeState.RUNNING, launched)

    def _drain(self, ray_node_id: str, node_id: str) -> None:
        """Ask Ray to drain the node for idle termination, which it grants only to a node
        with nothing running; from then on it schedules nothing there."""
        result = subprocess.run(
            [
                str(BIN / "ray"),
                "drain-node",
                "--address",
                self._state.gcs_address,
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
