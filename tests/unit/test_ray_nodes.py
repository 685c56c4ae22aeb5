"""The launcher's Ray heads share one machine: each cluster's Serve mode reaches `ray
start` through the environment Ray reads it from, and each head's HAProxy gets ports of
its own, inside its port block and clear of every node's workers and components."""

from __future__ import annotations

from meridian_core.spec import PORTS_PER_NODE, parse_spec
from meridian_host import ray_nodes
from meridian_host.platform_state import PlatformState

LOCATION = {"lat": 40.0, "lon": -75.0}


def spec_of(**more: object):
    regions = [{"name": f"local/r{i}", "location": LOCATION, "replicas": 1} for i in range(3)]
    return parse_spec({"models": [{"id": "m"}], "regions": regions, **more})


def started_heads(spec, monkeypatch, tmp_path) -> list[dict[str, str]]:
    spawned: list[dict[str, str]] = []
    monkeypatch.setattr(ray_nodes.processes, "spawn", lambda command, log, platform_id, env: spawned.append(env) or 1)
    state = PlatformState(name=spec.name, spec_path="s", platform_id="p", router_url="http://127.0.0.1:1")
    monkeypatch.setattr(PlatformState, "logs_dir", tmp_path)
    for region in spec.regions:
        ray_nodes.start_head(spec, state, region)
    return spawned


def test_heads_sharing_a_machine_get_their_own_haproxy_ports(monkeypatch, tmp_path):
    """HAProxy's stats and metrics, and its fallback (Serve's Python proxy, which holds a
    model's requests while it has no replica): a cluster sharing another's fallback port
    would send its held requests to a proxy that knows none of its routes."""
    spec = spec_of(ray={"high_throughput": True})
    envs = started_heads(spec, monkeypatch, tmp_path)
    assert all(env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" for env in envs)
    keys = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT")
    haproxy_ports = [int(env[key]) for env in envs for key in keys]
    assert len(set(haproxy_ports)) == len(haproxy_ports)
    # No Ray node of any cluster (heads and spares) may bind them: not its workers' range, not its components.
    taken = set()
    for region in spec.regions:
        ports = spec.cluster_ports(region)
        for block_index in [ports.head_block, *ports.node_blocks]:
            flags = ray_nodes.node_port_flags(spec.ray.node_ports_from + block_index * PORTS_PER_NODE)
            values = dict(zip(flags[::2], flags[1::2], strict=True))
            taken |= set(range(int(values["--min-worker-port"]), int(values["--max-worker-port"]) + 1))
            taken |= {int(v) for k, v in values.items() if k.endswith("-port") and "worker" not in k}
    assert not taken & set(haproxy_ports)


def test_serves_default_mode_sets_no_throughput_variable(monkeypatch, tmp_path):
    envs = started_heads(spec_of(ray={"high_throughput": False}), monkeypatch, tmp_path)
    assert not any(
        key in env for env in envs for key in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")
    )
    # In either mode idle Python workers are let go, and Ray's usage stats are off unless
    # the spec turns them on (meridian_host/node_env.py).
    assert all(env["RAY_num_workers_soft_limit"] == "0" for env in envs)
    assert all(env["RAY_USAGE_STATS_ENABLED"] == "0" for env in envs)
    shared = started_heads(spec_of(ray={"usage_stats": True}), monkeypatch, tmp_path)
    assert all(env["RAY_USAGE_STATS_ENABLED"] == "1" for env in shared)
