"""The environment every Ray node of a region's cluster starts with, wherever it runs:
the launcher's heads and local nodes, a cloud node's join script and every KubeRay pod.

- Serve's mode (meridian_host/serve_mode.py).
- `RAY_num_workers_soft_limit=0`. Ray keeps idle Python workers up to the node's CPU
  count (prestarted, or left behind by tasks such as a model download), and on the
  reference machine each held about 250 MiB (PSS): a SmolLM2 region at rest kept two,
  0.5 GiB of its 5.3. At 0 a worker idle for a second is let go, and the next actor or
  task that needs one starts it, about a second beside a replica's cold start.
"""

from __future__ import annotations

from meridian_host.serve_mode import serve_mode_env

IDLE_WORKERS_ENV = {"RAY_num_workers_soft_limit": "0"}


def node_env(high_throughput: bool) -> dict[str, str]:
    return serve_mode_env(high_throughput) | IDLE_WORKERS_ENV
