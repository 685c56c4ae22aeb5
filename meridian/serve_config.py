"""The Ray Serve config (`serve deploy` schema) for a platform spec: one app per region."""

from __future__ import annotations

from typing import Any

from meridian_core.spec import PlatformSpec

REGION_APP_IMPORT_PATH = "deployments.region_app:build_region_app"


def region_app_args(spec: PlatformSpec, region_name: str) -> dict[str, Any]:
    """The region's app args: the spec's own sections, dumped as they are."""
    return {
        "region": spec.region(region_name).model_dump(mode="json"),
        "models": [m.model_dump(mode="json") for m in spec.models],
        "slo": spec.slo.model_dump(mode="json"),
    }


def serve_config(spec: PlatformSpec) -> dict[str, Any]:
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": spec.ray.serve_port},
        "applications": [
            {
                "name": region.slug,
                "route_prefix": f"/{region.slug}",
                "import_path": REGION_APP_IMPORT_PATH,
                "args": region_app_args(spec, region.name),
            }
            for region in spec.regions
        ],
    }
