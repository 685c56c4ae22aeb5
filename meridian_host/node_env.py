"""The environment every Ray node of a region's cluster starts with, wherever it runs:
the launcher's heads and local nodes, a cloud node's join script and every KubeRay pod.

- Serve's mode (meridian_host/serve_mode.py).
- `RAY_USAGE_STATS_ENABLED`, from the spec's `ray.usage_stats`. Ray reads it in every
  process, so a replica on any node knows it (`ray start --disable-usage-stats` sets it
  only on a head). Off, a region's LLM server also skips Ray Serve LLM's telemetry report
  (deployments/region_server.py): a detached actor on the head, about 0.25 GiB (PSS),
  that gathers what only usage stats would send.
- `RAY_num_workers_soft_limit=0`. Ray keeps idle Python workers up to the node's CPU
  count (prestarted, or left behind by tasks such as a model download), and on the
  reference machine each held about 250 MiB (PSS): a SmolLM2 region at rest kept two,
  0.5 GiB of its 5.3. At 0 a worker idle for a second is let go, and the next actor or
  task that needs one starts it, about a second beside a replica's cold start.
"""

from __future__ import annotations

from meridian_core.spec import RaySpec
from meridian_host.serve_mode import serve_mode_env

IDLE_WORKERS_ENV = {"RAY_num_workers_soft_limit": "0"}


def node_env(ray: RaySpec) -> dict[str, str]:
    usage = {"RAY_USAGE_STATS_ENABLED": "1" if ray.usage_stats else "0"}
    return serve_mode_env(ray.high_throughput) | usage | IDLE_WORKERS_ENV
