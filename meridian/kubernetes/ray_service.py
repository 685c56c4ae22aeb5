"""One KubeRay `RayService` per region: the region's own Ray cluster on Kubernetes.

Its `serveConfigV2` is what `meridian serve-config` gives for the region's cluster, so
the same region app runs as under `meridian up`. The cluster takes Ray's token
authentication from a Secret the user creates. Its one worker group carries the
region's Ray label and resource in KubeRay's own group `labels` and `resources` (the
operator rejects labels in `rayStartParams`), and the accelerator's Kubernetes resource
and node selector when the region has one.

Pure: spec in, a plain dict out. Writing files is the command's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from meridian.serve_config import serve_config
from meridian_core.spec import PlatformSpec, RegionSpec, region_resource

RAY_VERSION = "2.60.0"
RAY_IMAGE_DEFAULT = "meridian:latest"
REGION_LABEL = "meridian.io/region"
REGION_RESOURCE_CAPACITY = "1000"
GCS_PORT, DASHBOARD_PORT, SERVE_PORT = 6379, 8265, 8000
# Ray Serve LLM's high-throughput settings (KubeRay's ray-service.high-throughput-llm
# sample), set on head and workers alike.
HIGH_THROUGHPUT_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
}


@dataclass(frozen=True)
class AcceleratorOnKubernetes:
    resource: str  # the extended resource a pod requests, e.g. nvidia.com/gpu
    node_selector: dict[str, str]  # where nodes carrying it are found


# The accelerators a spec may name, as Kubernetes schedules them (NVIDIA's device
# plugin resource; the GPU product label NVIDIA's GPU feature discovery sets).
ACCELERATORS: dict[str, AcceleratorOnKubernetes] = {
    name: AcceleratorOnKubernetes("nvidia.com/gpu", {"nvidia.com/gpu.product": product})
    for name, product in {
        "L4": "NVIDIA-L4",
        "A10G": "NVIDIA-A10G",
        "L40S": "NVIDIA-L40S",
        "A100": "NVIDIA-A100-SXM4-40GB",
        "A100-80GB": "NVIDIA-A100-SXM4-80GB",
        "H100": "NVIDIA-H100-80GB-HBM3",
        "H200": "NVIDIA-H200",
    }.items()
}


class RenderError(ValueError):
    """A spec that cannot be rendered; the message names the field."""


def recommended_labels(spec: PlatformSpec, component: str) -> dict[str, str]:
    """Kubernetes' recommended `app.kubernetes.io/*` labels."""
    return {
        "app.kubernetes.io/name": "meridian",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "meridian",
        "app.kubernetes.io/managed-by": "meridian",
    }


def ray_token_secret_name(region: RegionSpec) -> str:
    return f"meridian-{region.slug}-ray-token"


def ray_service(spec: PlatformSpec, region: RegionSpec, image: str = RAY_IMAGE_DEFAULT) -> dict[str, Any]:
    index = spec.regions.index(region)
    accelerator = _accelerator(region, index)
    serve = serve_config(spec, region)
    # On Kubernetes the proxy answers the region's Service, on Serve's own port.
    serve["http_options"] = {"host": "0.0.0.0", "port": SERVE_PORT}
    replicas = region.autoscaling.min_replicas if region.autoscaling else region.replicas
    most = region.autoscaling.max_replicas if region.autoscaling else region.replicas
    worker_resources = {"cpu": str(spec.ray.cpus_per_region_node), "memory": "16Gi"}
    if accelerator is not None:
        worker_resources[accelerator.resource] = "1"
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": f"meridian-{region.slug}", "labels": recommended_labels(spec, "region")},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "authOptions": {"mode": "token", "secretName": ray_token_secret_name(region)},
                "headGroupSpec": {
                    # The head hosts Serve's controller, proxy and the region's ingress, no replica.
                    "rayStartParams": {"num-cpus": "1", "dashboard-host": "0.0.0.0"},
                    "template": _pod("ray-head", image, {"cpu": "2", "memory": "4Gi"}, None, _head_ports()),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "region",
                        "replicas": max(1, replicas),
                        "minReplicas": max(1, replicas),
                        "maxReplicas": max(1, most),
                        "labels": {REGION_LABEL: region.slug},
                        "resources": {region_resource(region.slug): REGION_RESOURCE_CAPACITY},
                        "rayStartParams": {},
                        "template": _pod("ray-worker", image, worker_resources, accelerator, []),
                    }
                ],
            },
        },
    }


def _accelerator(region: RegionSpec, index: int) -> AcceleratorOnKubernetes | None:
    if region.accelerator.lower() == "cpu":
        return None
    found = ACCELERATORS.get(region.accelerator)
    if found is None:
        known = ", ".join(sorted(ACCELERATORS))
        raise RenderError(
            f"regions.{index}.accelerator: {region.accelerator!r} has no Kubernetes resource name (known: cpu, {known})"
        )
    return found


def _head_ports() -> list[dict[str, Any]]:
    return [
        {"name": "gcs", "containerPort": GCS_PORT},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT},
        {"name": "serve", "containerPort": SERVE_PORT},
    ]


def _pod(
    name: str,
    image: str,
    resources: dict[str, str],
    accelerator: AcceleratorOnKubernetes | None,
    ports: list[dict[str, Any]],
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "env": [{"name": key, "value": value} for key, value in sorted(HIGH_THROUGHPUT_ENV.items())],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if ports:
        container["ports"] = ports
    pod: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 100},
        "containers": [container],
    }
    if accelerator is not None:
        pod["nodeSelector"] = dict(accelerator.node_selector)
    return {"spec": pod}
