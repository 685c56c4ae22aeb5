"""The first-boot script a cloud node runs to join its region's Ray cluster.

AWS passes it as EC2 user data, GCP as the `startup-script` metadata item; both run it
as root on first boot. The node advertises the same Ray resource and label that the
local launcher gives region nodes (meridian_host/ray_nodes.py), so the region's Serve
replicas, which require `region:<slug>`, land on it. A cluster with Ray's token
authentication gets its token in the script: whoever may read the instance's user data
or metadata may read it, so grant those reads as you would the cluster itself.

The image may set two variables the script reads (neither is needed on a cloud VM):
`MERIDIAN_BOOT_LOG`, where the script logs (default /var/log/meridian-bootstrap.log),
and `MERIDIAN_RAY_START_ARGS`, further `ray start` flags of the host (e.g. fixed ports
where several nodes share one machine, as in the emulated clouds the tests run).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from meridian_core.spec import region_resource
from meridian_host.ray_nodes import NODE_LABEL, REGION_LABEL, REGION_RESOURCE_CAPACITY

CLOUD_LABEL = "meridian.io/cloud"
ZONE_LABEL = "meridian.io/zone"
MARKET_LABEL = "meridian.io/market"


@dataclass(frozen=True)
class RayJoin:
    """How a new node reaches its region's Ray head and what it tells Ray about itself."""

    head_address: str  # "<host>:<gcs port>" of the region's Ray head
    region_slug: str  # e.g. "aws-us-east-1", as RegionSpec.slug spells it
    labels: Mapping[str, str] = field(default_factory=dict)  # extra Ray node labels
    ray_bin: str = "ray"
    # The cluster's Ray token (RAY_AUTH_MODE=token); None for a cluster without one.
    auth_token: str | None = field(default=None, repr=False)
    # Environment Ray reads at start on every node of the cluster (Serve's mode).
    env: Mapping[str, str] = field(default_factory=dict)


def ray_join_script(join: RayJoin, *, cloud: str, zone: str, market: str, node_label: str) -> str:
    """A bash script that starts Ray on the node and joins it to `join.head_address`,
    labelled `meridian.io/node=<node_label>`: how the capacity loop tells that the node joined."""
    labels = {
        REGION_LABEL: join.region_slug,
        NODE_LABEL: node_label,
        CLOUD_LABEL: cloud,
        ZONE_LABEL: zone,
        MARKET_LABEL: market,
        **join.labels,
    }
    resources = json.dumps({region_resource(join.region_slug): REGION_RESOURCE_CAPACITY})
    command = [
        join.ray_bin,
        "start",
        f"--address={join.head_address}",
        f"--resources={resources}",
        "--labels=" + ",".join(f"{key}={value}" for key, value in labels.items()),
    ]
    return "\n".join(
        [
            "#!/bin/bash",
            "# Meridian node bootstrap: join the region's Ray cluster.",
            "set -euo pipefail",
            'exec >>"${MERIDIAN_BOOT_LOG:-/var/log/meridian-bootstrap.log}" 2>&1',
            *(
                ["export RAY_AUTH_MODE=token", f"export RAY_AUTH_TOKEN={shlex.quote(join.auth_token)}"]
                if join.auth_token
                else []
            ),
            *(f"export {name}={shlex.quote(value)}" for name, value in sorted(join.env.items())),
            # Unquoted on purpose: the host's flags are words.
            shlex.join(command) + " ${MERIDIAN_RAY_START_ARGS:-}",
            "",
        ]
    )
