"""The parts above the regions' clusters, on Kubernetes: the spec as a ConfigMap, the
router (Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler) and the
global loop (a Deployment). Both read the in-cluster spec and every region's token from
the Secrets the user creates; the router also reads the API keys' Secret and mounts the
GeoIP database's volume when the spec locates clients by IP."""

from __future__ import annotations

import hashlib
from typing import Any

from meridian.kubernetes.in_cluster_spec import GEOIP_DIR, ROUTER_PORT, SPEC_DIR, SPEC_FILE, in_cluster_spec
from meridian.kubernetes.objects import (
    CONTAINER_SECURITY,
    POD_SECURITY,
    TOKEN_KEY,
    dump_yaml,
    http_probe,
    metadata,
    recommended_labels,
    region_token_env,
    resources,
    secret_env,
    selector_labels,
)
from meridian_core.kubernetes_spec import PodResources
from meridian_core.spec import PlatformSpec

SPEC_CONFIG_MAP = "meridian-spec"
ROUTER_ADMIN_TOKEN_SECRET = "meridian-router-admin-token"
ROUTER = "meridian-router"
GLOBAL_LOOP = "meridian-global-loop"
GLOBAL_LOOP_HEALTH_PORT = 8081
# How long a pod has after SIGTERM to finish what it is doing (Kubernetes' default).
TERMINATION_GRACE_S = 30


def spec_config_map(spec: PlatformSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(spec, SPEC_CONFIG_MAP, "config"),
        "data": {SPEC_FILE: dump_yaml(in_cluster_spec(spec))},
    }


def router_objects(spec: PlatformSpec) -> list[dict[str, Any]]:
    k8s = spec.kubernetes.router
    env = region_token_env(spec) + [
        secret_env(key.key_env, spec.kubernetes.api_keys_secret, key.key_env)
        for key in spec.router.auth.keys
        if key.key_env is not None
    ]
    if spec.router.auth.keys:  # its operational endpoints then need the admin token (Prometheus's too)
        env.append(secret_env(spec.router.auth.admin_token_env, ROUTER_ADMIN_TOKEN_SECRET, TOKEN_KEY))
    volumes, mounts = _spec_volume()
    if spec.router.locate.geoip_database is not None:
        volumes.append({"name": "geoip", "persistentVolumeClaim": {"claimName": spec.kubernetes.geoip_claim}})
        mounts.append({"name": "geoip", "mountPath": GEOIP_DIR, "readOnly": True})
    container = _container(
        "router",
        spec,
        ["python", "-m", "geo_router", f"{SPEC_DIR}/{SPEC_FILE}"],
        env,
        mounts,
        k8s.resources,
        port=ROUTER_PORT,
    )
    selector = selector_labels(spec, "router")
    deployment = _deployment(spec, ROUTER, "router", _pod_template(spec, "router", container, volumes))
    # The HorizontalPodAutoscaler owns the replica count; one rolled out at a time, none lost.
    deployment["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    deployment["spec"]["template"]["spec"]["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": topology,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector},
        }
        for topology in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, ROUTER, "router"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": ROUTER_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(spec, ROUTER, "router"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    autoscaler = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(spec, ROUTER, "router"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": ROUTER},
            "minReplicas": k8s.min_replicas,
            "maxReplicas": k8s.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": k8s.target_cpu_percent},
                    },
                }
            ],
        },
    }
    return [deployment, service, budget, autoscaler]


def global_loop_deployment(spec: PlatformSpec) -> dict[str, Any]:
    volumes, mounts = _spec_volume()
    container = _container(
        "global-loop",
        spec,
        [
            "python",
            "-m",
            "autoscaler.live.global_loop",
            f"{SPEC_DIR}/{SPEC_FILE}",
            "--health-port",
            str(GLOBAL_LOOP_HEALTH_PORT),
        ],
        region_token_env(spec),
        mounts,
        spec.kubernetes.global_loop,
        port=GLOBAL_LOOP_HEALTH_PORT,
    )
    deployment = _deployment(spec, GLOBAL_LOOP, "global-loop", _pod_template(spec, "global-loop", container, volumes))
    # One loop sets the floors: the old one stops before the new one starts.
    deployment["spec"]["replicas"] = 1
    deployment["spec"]["strategy"] = {"type": "Recreate"}
    return deployment


def _spec_volume() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The spec, and a writable /tmp on the read-only root file system."""
    return (
        [{"name": "spec", "configMap": {"name": SPEC_CONFIG_MAP}}, {"name": "tmp", "emptyDir": {}}],
        [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}],
    )


def _container(
    name: str,
    spec: PlatformSpec,
    command: list[str],
    env: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    size: PodResources,
    port: int,
) -> dict[str, Any]:
    return {
        "name": name,
        "image": spec.kubernetes.image,
        "command": command,
        "env": env,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "resources": resources(size),
        "readinessProbe": http_probe("/healthz", "http", period_s=5, failures=3),
        "livenessProbe": http_probe("/healthz", "http", period_s=10, failures=6),
        "securityContext": {**CONTAINER_SECURITY, "readOnlyRootFilesystem": True},
    }


def _pod_template(
    spec: PlatformSpec, component: str, container: dict[str, Any], volumes: list[dict[str, Any]]
) -> dict[str, Any]:
    config = spec_config_map(spec)["data"][SPEC_FILE]
    return {
        "metadata": {
            "labels": recommended_labels(spec, component),
            # A changed spec rolls the pods, which read it only at start.
            "annotations": {"meridian.io/spec-sha256": hashlib.sha256(config.encode()).hexdigest()},
        },
        "spec": {
            "automountServiceAccountToken": False,  # neither talks to the Kubernetes API
            "securityContext": dict(POD_SECURITY),
            "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
            "containers": [container],
            "volumes": volumes,
        },
    }


def _deployment(spec: PlatformSpec, name: str, component: str, template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(spec, name, component),
        "spec": {"selector": {"matchLabels": selector_labels(spec, component)}, "template": template},
    }
