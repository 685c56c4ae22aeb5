"""The Ray Serve config (`serve deploy` schema) of one region's cluster: its control app
at the region's endpoint, and one app per model under it."""

from __future__ import annotations

from typing import Any

from meridian_core.spec import ModelSpec, PlatformSpec, RegionSpec, model_app_name, model_route

REGION_APP_IMPORT_PATH = "deployments.region_app:build_region_app"
MODEL_APP_IMPORT_PATH = "deployments.model_app:build_model_app"


def token_args(control_token_sha256: str | None, control_token_env: str | None) -> dict[str, str]:
    """Where the region's apps check its token from (deployments/region_auth.py: RegionTokenSource)."""
    args = {}
    if control_token_sha256 is not None:
        args["control_token_sha256"] = control_token_sha256
    if control_token_env is not None:
        args["control_token_env"] = control_token_env
    return args


def region_app_args(spec: PlatformSpec, region: RegionSpec, tokens: dict[str, str]) -> dict[str, Any]:
    """The control app's args (deployments/region_app.py: RegionAppArgs)."""
    return {"region": region.model_dump(mode="json"), "models": [m.id for m in spec.models], **tokens}


def model_app_args(spec: PlatformSpec, region: RegionSpec, model: ModelSpec, tokens: dict[str, str]) -> dict[str, Any]:
    """One model's app args: the spec's own sections, dumped as they are
    (deployments/model_app.py: ModelAppArgs)."""
    return {
        "region": region.model_dump(mode="json"),
        "model": model.model_dump(mode="json"),
        "slo": spec.slo.model_dump(mode="json"),
        **tokens,
    }


def serve_config(
    spec: PlatformSpec,
    region: RegionSpec,
    control_token_sha256: str | None = None,
    control_token_env: str | None = None,
) -> dict[str, Any]:
    """What `serve deploy` applies to the region's cluster. A managed cluster's proxy
    listens on its own port (RaySpec); an existing cluster's on Serve's default."""
    port = spec.cluster_ports(region).serve if region.cluster.managed else 8000
    tokens = token_args(control_token_sha256, control_token_env)
    endpoint = f"/{region.slug}"
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1" if region.cluster.managed else "0.0.0.0", "port": port},
        "applications": [
            {
                "name": region.slug,
                "route_prefix": endpoint,
                "import_path": REGION_APP_IMPORT_PATH,
                "args": region_app_args(spec, region, tokens),
            },
            *(
                {
                    "name": model_app_name(region.slug, model.id),
                    "route_prefix": endpoint + model_route(model.id),
                    "import_path": MODEL_APP_IMPORT_PATH,
                    "args": model_app_args(spec, region, model, tokens),
                }
                for model in spec.models
            ),
        ],
    }
