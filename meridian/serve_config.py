"""The Ray Serve config (`serve deploy` schema) for a platform spec: one app per region."""

from __future__ import annotations

from typing import Any

from meridian_core.spec import PlatformSpec

REGION_APP_IMPORT_PATH = "deployments.region_app:build_region_app"


def region_app_args(spec: PlatformSpec, region_name: str) -> dict[str, Any]:
    region = spec.region(region_name)
    args: dict[str, Any] = {
        "region": region.name,
        "slug": region.slug,
        "models": [
            {
                "id": m.id,
                "source": m.source.model_dump(mode="json"),
                "max_model_len": m.max_model_len,
                "kv_cache_gib": m.kv_cache_gib,
            }
            for m in spec.models
        ],
        "replicas": region.replicas,
        "cpus_per_replica": region.cpus_per_replica,
        "engine_cpus": region.engine_cpus,
    }
    if region.autoscaling is not None:
        args["autoscaling"] = {
            **region.autoscaling.model_dump(),
            "slo_ttft_ms": spec.slo.ttft_p95_ms,
            "slo_itl_ms": spec.slo.itl_p95_ms,
        }
    return args


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
