"""One region's control application: `/status` and `/fleet-floor` (deployments/region_control.py),
at the region's endpoint. Each model the region serves is an application of its own
(deployments/model_app.py), under `<endpoint>/models/<model id>`.

`serve deploy` configs import `deployments.region_app:build_region_app`. The control
replica lives on the cluster's head, beside Serve's controller and proxy, so the region
answers for itself while it has no node: before its first one is bought, and after a
spot node is taken away, when its capacity report matters most.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field
from ray import serve
from ray.serve.deployment import Application

from deployments.region_auth import RegionTokenSource
from deployments.region_control import RegionControl
from meridian_core.spec import MODEL_ID, RegionSpec

# Ray's own resource of a cluster's head node.
HEAD_NODE_RESOURCE = "node:__internal_head__"
HEAD_NODE_SHARE = 0.001
# Every router and the global loop poll /status; Serve's default of 5 would queue them.
CONTROL_MAX_ONGOING_REQUESTS = 64


class RegionAppArgs(RegionTokenSource):
    """The `args` of one region's control application in a `serve deploy` config: the
    region's spec section, as `meridian serve-config` dumps it, and its models' ids."""

    region: RegionSpec
    models: list[Annotated[str, Field(pattern=MODEL_ID.pattern)]] = Field(min_length=1)


def build_region_app(args: dict[str, Any]) -> Application:
    parsed = RegionAppArgs.model_validate(args)
    control = serve.deployment(
        serve.ingress()(RegionControl),
        name="RegionControl",
        num_replicas=1,
        max_ongoing_requests=CONTROL_MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: HEAD_NODE_SHARE}},
    )
    return control.bind(
        region=parsed.region.name,
        models=parsed.models,
        control_token_sha256=parsed.control_token_sha256,
        control_token_env=parsed.control_token_env,
    )
