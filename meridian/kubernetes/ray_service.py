"""One KubeRay `RayService` per region: the region's own Ray cluster on Kubernetes.

Its `serveConfigV2` is what `meridian serve-config --token-env MERIDIAN_REGION_TOKEN`
gives for the region's cluster, so the same region app runs as under `meridian up`; its
head reads the region's token from a Secret. The cluster takes Ray's token
authentication from a Secret the user creates. Its one worker group carries the
region's Ray label and resource in KubeRay's own group `labels` and `resources` (the
operator rejects labels in `rayStartParams`), and the accelerator's Kubernetes resource
and node selector when the region has one. KubeRay's autoscaler adds and removes
workers as Serve asks for replicas, between the region's replica bounds.

Pure: spec in, a plain dict out. Writing files is the command's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meridian.kubernetes.objects import (
    CONTAINER_SECURITY,
    POD_SECURITY,
    TOKEN_KEY,
    RenderError,
    dump_yaml,
    http_probe,
    metadata,
    recommended_labels,
    region_token_secret,
    resources,
    secret_env,
)
from meridian.serve_config import serve_config
from meridian_core.kubernetes_spec import PodResources
from meridian_core.spec import PlatformSpec, RegionSpec, region_resource
from meridian_host.node_env import node_env

RAY_VERSION = "2.60.0"
REGION_LABEL = "meridian.io/region"
REGION_RESOURCE_CAPACITY = "1000"
# Where every pod's replicas read the region's token (deployments/region_auth.py): the
# control app's on the head, the model replicas' on the workers.
REGION_TOKEN_VAR = "MERIDIAN_REGION_TOKEN"
GCS_PORT, DASHBOARD_PORT, SERVE_PORT, DASHBOARD_AGENT_PORT = 6379, 8265, 8000, 52365


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


def ray_service_name(region: RegionSpec) -> str:
    return f"meridian-{region.slug}"


def serve_service_url(region: RegionSpec) -> str:
    """The region app's base URL inside the cluster: KubeRay's Serve Service for the
    RayService, which follows the active cluster through upgrades."""
    return f"http://{ray_service_name(region)}-serve-svc:{SERVE_PORT}/{region.slug}"


def head_service_host(region: RegionSpec) -> str:
    return f"{ray_service_name(region)}-head-svc"


def ray_token_secret_name(region: RegionSpec) -> str:
    return f"meridian-{region.slug}-ray-token"


def region_serve_config(spec: PlatformSpec, region: RegionSpec) -> dict[str, Any]:
    serve = serve_config(spec, region, control_token_env=REGION_TOKEN_VAR)
    # On Kubernetes the proxy answers the region's Service, on Serve's own port.
    serve["http_options"] = {"host": "0.0.0.0", "port": SERVE_PORT}
    return serve


def ray_service(spec: PlatformSpec, region: RegionSpec) -> dict[str, Any]:
    index = spec.regions.index(region)
    accelerator = _accelerator(region, index)
    fewest, most = spec.replica_bounds(region)  # one worker per replica
    k8s = spec.kubernetes
    worker_size = resources(
        PodResources(cpu=str(spec.ray.cpus_per_region_node), memory=k8s.worker_memory),
        **({accelerator.resource: "1"} if accelerator else {}),
    )
    token_env = [secret_env(REGION_TOKEN_VAR, region_token_secret(region), TOKEN_KEY)]
    service_spec: dict[str, Any] = {
        "serveConfigV2": dump_yaml(region_serve_config(spec, region)),
        "rayClusterConfig": {
            "rayVersion": RAY_VERSION,
            "enableInTreeAutoscaling": True,
            "authOptions": {"mode": "token", "secretName": ray_token_secret_name(region)},
            "headGroupSpec": {
                # The head hosts Serve's controller, proxy and the region's control app, no model replica.
                "rayStartParams": {"num-cpus": "1", "dashboard-host": "0.0.0.0"},
                "template": _pod(
                    spec,
                    region,
                    "ray-head",
                    k8s.image,
                    resources(k8s.head),
                    token_env,
                    _head_ports(),
                    http_probe("/api/gcs_healthz", DASHBOARD_PORT, period_s=10, failures=6),
                ),
            },
            "workerGroupSpecs": [
                {
                    "groupName": "region",
                    "replicas": fewest,
                    "minReplicas": fewest,
                    "maxReplicas": most,
                    "labels": {REGION_LABEL: region.slug},
                    "resources": {region_resource(region.slug): REGION_RESOURCE_CAPACITY},
                    "rayStartParams": {},
                    "template": _worker_pod(spec, region, worker_size, accelerator, token_env),
                }
            ],
        },
    }
    upgrade = k8s.incremental_upgrade
    if upgrade is not None:
        service_spec["upgradeStrategy"] = {
            "type": "NewClusterWithIncrementalUpgrade",
            "clusterUpgradeOptions": {
                "gatewayClassName": upgrade.gateway_class,
                "stepSizePercent": upgrade.step_size_percent,
                "intervalSeconds": upgrade.interval_s,
                "maxSurgePercent": upgrade.max_surge_percent,
            },
        }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata(spec, ray_service_name(region), "region"),
        "spec": service_spec,
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


def _worker_pod(
    spec: PlatformSpec,
    region: RegionSpec,
    size: dict[str, Any],
    accelerator: AcceleratorOnKubernetes | None,
    token_env: list[dict[str, Any]],
) -> dict[str, Any]:
    template = _pod(
        spec,
        region,
        "ray-worker",
        spec.kubernetes.image,
        size,
        token_env,
        [],
        http_probe("/api/local_raylet_healthz", DASHBOARD_AGENT_PORT, period_s=10, failures=6),
    )
    # Leave the cluster before the pod goes, so Serve moves the replica's work first.
    template["spec"]["containers"][0]["lifecycle"] = {"preStop": {"exec": {"command": ["ray", "stop"]}}}
    if accelerator is not None:
        template["spec"]["nodeSelector"] = dict(accelerator.node_selector)
    return template


def _pod(
    spec: PlatformSpec,
    region: RegionSpec,
    name: str,
    image: str,
    size: dict[str, Any],
    env: list[dict[str, Any]],
    ports: list[dict[str, Any]],
    probe: dict[str, Any],
) -> dict[str, Any]:
    # Serve's mode on head and workers alike (KubeRay's ray-service.high-throughput-llm sample).
    node = [{"name": key, "value": value} for key, value in sorted(node_env(spec.ray).items())]
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "env": node + env,
        "resources": size,
        # Ray's health endpoints answer without its token.
        "readinessProbe": probe,
        "livenessProbe": probe,
        "securityContext": dict(CONTAINER_SECURITY),
    }
    if ports:
        container["ports"] = ports
    # The region's label on its pods too, for what scrapes or selects them (Prometheus).
    labels = {**recommended_labels(spec, "region"), REGION_LABEL: region.slug}
    return {
        "metadata": {"labels": labels},
        "spec": {"securityContext": dict(POD_SECURITY), "containers": [container]},
    }
