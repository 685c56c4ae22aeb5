"""Ray nodes as local processes: `ray start --block` in a session of its own, with a
fixed block of ports per node. The launcher starts each managed region's head this way
and the local capacity provider (capacity/live/local.py) the region's worker nodes."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from meridian_core.spec import PORTS_PER_NODE, PlatformSpec, RegionSpec
from meridian_host import processes
from meridian_host.node_env import node_env
from meridian_host.platform_state import ClusterState, PlatformState
from meridian_host.region_tokens import ray_auth_env
from meridian_host.serve_mode import haproxy_ports_env

BIN = Path(sys.executable).parent
REGION_LABEL = "meridian.io/region"
NODE_LABEL = "meridian.io/node"
REGION_RESOURCE_CAPACITY = 1000  # each replica takes 1 unit
# Ports a Ray node's own components listen on (node manager, object manager, metrics,
# dashboard agent http + grpc, runtime env agent, and on a head its HAProxy's stats and
# metrics and its fallback Python proxy).
COMPONENT_PORTS = 9
# Objects passed between Serve actors are small; the default (30% of RAM per node)
# would reserve most of /dev/shm across several nodes on one machine.
OBJECT_STORE_BYTES = 256 * 1024**2
# Processes beside the engines (Serve controller/proxy, the control app) need CPU too; Ray only
# schedules by logical CPUs, so a head advertises one.
HEAD_CPUS = 1


def component_ports(block: int) -> list[int]:
    return [block + PORTS_PER_NODE - COMPONENT_PORTS + k for k in range(COMPONENT_PORTS)]


def node_port_flags(block: int, node_ip: str = "127.0.0.1") -> list[str]:
    """`ray start` flags that keep a node on this machine inside the ports block
    [block, block + PORTS_PER_NODE): its components at the top, its workers below. Fixed
    and below the ephemeral range, so nothing else can take them between choice and bind."""
    ports = component_ports(block)
    flags = {
        "--node-ip-address": node_ip,
        "--object-store-memory": OBJECT_STORE_BYTES,
        "--node-manager-port": ports[0],
        "--object-manager-port": ports[1],
        "--metrics-export-port": ports[2],
        "--dashboard-agent-listen-port": ports[3],
        "--dashboard-agent-grpc-port": ports[4],
        "--runtime-env-agent-port": ports[5],
        "--min-worker-port": block,
        "--max-worker-port": block + PORTS_PER_NODE - COMPONENT_PORTS - 1,
    }
    return [item for flag, value in flags.items() for item in (flag, str(value))]


def start_ray_node(
    spec: PlatformSpec,
    state: PlatformState,
    cluster: ClusterState,
    block_index: int,
    log_name: str,
    role_args: list[str],
    extra_env: dict[str, str] | None = None,
) -> int:
    """Start a node of `cluster` on port block `block_index`, with the cluster's Ray
    token and Serve's mode (meridian_host/serve_mode.py); return the pid of its `ray start`."""
    flags = node_port_flags(spec.ray.node_ports_from + block_index * PORTS_PER_NODE)
    return processes.spawn(
        [
            str(BIN / "ray"),
            "start",
            *role_args,
            "--block",
            *flags,
        ],
        state.logs_dir / f"{log_name}.log",
        state.platform_id,
        env=ray_auth_env(state, cluster) | node_env(spec.ray) | (extra_env or {}),
    )


def start_head(spec: PlatformSpec, state: PlatformState, region: RegionSpec) -> ClusterState:
    """Start the head of a managed region's cluster; it hosts Serve's controller and
    proxy, and no replica (it has no `region:<slug>` resource)."""
    ports = spec.cluster_ports(region)
    # Ray puts unix sockets under this directory; it must stay short (AF_UNIX paths are
    # limited to 107 bytes), so it does not live under the state dir.
    temp_dir = f"/tmp/meridian-{spec.name}-{ports.head_block}"
    cluster = ClusterState(
        slug=region.slug,
        gcs_address=f"127.0.0.1:{ports.gcs}",
        dashboard_url=f"http://127.0.0.1:{ports.dashboard}",
        ray_temp_dir=temp_dir,
    )
    block = spec.ray.node_ports_from + ports.head_block * PORTS_PER_NODE
    fallback_proxy, haproxy_stats, haproxy_metrics = component_ports(block)[-3:]
    cluster.head_pid = start_ray_node(
        spec,
        state,
        cluster,
        block_index=ports.head_block,
        log_name=f"ray-head-{region.slug}",
        extra_env=haproxy_ports_env(haproxy_stats, haproxy_metrics, fallback_proxy),
        role_args=[
            "--head",
            "--port",
            str(ports.gcs),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(ports.dashboard),
            "--ray-client-server-port",
            str(ports.client_server),
            "--num-cpus",
            str(HEAD_CPUS),
            "--temp-dir",
            temp_dir,
        ],  # fmt: skip
    )
    return cluster


def alive_nodes_labelled(dashboard_url: str, label: str, headers: dict[str, str]) -> dict[str, str] | None:
    """Alive Ray nodes carrying `label`: its value -> Ray node id; None when the state
    API does not answer, which is not the same as no node."""
    try:
        response = httpx.get(f"{dashboard_url}/api/v0/nodes", params={"limit": 1000}, headers=headers, timeout=5)
        response.raise_for_status()
        nodes = response.json()["data"]["result"]["result"]
        return {
            n["labels"][label]: n["node_id"]
            for n in nodes
            if n.get("state") == "ALIVE" and label in (n.get("labels") or {})
        }
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return None


def nodes_running_actors(dashboard_url: str, headers: dict[str, str]) -> set[str] | None:
    """Ray node ids with a live actor (a Serve replica, the ingress, ...); None if the
    state API did not answer, so callers can treat every node as busy."""
    params = {"limit": 10000, "filter_keys": "state", "filter_predicates": "=", "filter_values": "ALIVE"}
    try:
        response = httpx.get(f"{dashboard_url}/api/v0/actors", params=params, headers=headers, timeout=5)
        actors = response.json()["data"]["result"]["result"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return {a["node_id"] for a in actors if a.get("node_id")}
