"""The Ray Serve config (`serve deploy` schema) of one region's cluster: its region app."""

from __future__ import annotations

from typing import Any

from meridian_core.spec import PlatformSpec, RegionSpec

REGION_APP_IMPORT_PATH = "deployments.region_app:build_region_app"


def region_app_args(
    spec: PlatformSpec,
    region: RegionSpec,
    control_token_sha256: str | None = None,
    control_token_env: str | None = None,
) -> dict[str, Any]:
    """The region's app args: the spec's own sections, dumped as they are, and where the
    region's token is checked from (deployments/region_app.py: RegionAppArgs)."""
    args: dict[str, Any] = {
        "region": region.model_dump(mode="json"),
        "models": [m.model_dump(mode="json") for m in spec.models],
        "slo": spec.slo.model_dump(mode="json"),
    }
    if control_token_sha256 is not None:
        args["control_token_sha256"] = control_token_sha256
    if control_token_env is not None:
        args["control_token_env"] = control_token_env
    return args


def serve_config(
    spec: PlatformSpec,
    region: RegionSpec,
    control_token_sha256: str | None = None,
    control_token_env: str | None = None,
) -> dict[str, Any]:
    """What `serve deploy` applies to the region's cluster. A managed cluster's proxy
    listens on its own port (RaySpec); an existing cluster's on Serve's default."""
    port = spec.cluster_ports(region).serve if region.cluster.managed else 8000
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1" if region.cluster.managed else "0.0.0.0", "port": port},
        "applications": [
            {
                "name": region.slug,
                "route_prefix": f"/{region.slug}",
                "import_path": REGION_APP_IMPORT_PATH,
                "args": region_app_args(spec, region, control_token_sha256, control_token_env),
            }
        ],
    }
