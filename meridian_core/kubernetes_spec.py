"""How the platform runs on Kubernetes (`kubernetes:` in the spec), read only by
`meridian render kubernetes`: the image, the pods' sizes, the router's replicas, the
Secrets and volume the user provides, and KubeRay's incremental upgrade."""

from __future__ import annotations

from pydantic import Field, model_validator

from meridian_core.cluster_spec import StrictSection

# A Kubernetes resource quantity as pods request it: "2", "500m", "4Gi".
QUANTITY = r"^\d+(\.\d+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
# An object name Kubernetes accepts (RFC 1123 subdomain, as Secrets and claims are named).
OBJECT_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class PodResources(StrictSection):
    """What a pod requests, and is limited to."""

    cpu: str = Field(pattern=QUANTITY)
    memory: str = Field(pattern=QUANTITY)


class RouterOnKubernetes(StrictSection):
    """The router's Deployment, scaled by a HorizontalPodAutoscaler on CPU."""

    min_replicas: int = Field(default=2, ge=1, le=100)
    max_replicas: int = Field(default=6, ge=1, le=100)
    target_cpu_percent: int = Field(default=70, ge=10, le=100)
    resources: PodResources = PodResources(cpu="1", memory="1Gi")

    @model_validator(mode="after")
    def _bounds(self) -> RouterOnKubernetes:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class IncrementalUpgrade(StrictSection):
    """KubeRay's incremental upgrade (KubeRay >= 1.5 with Gateway API): a new cluster
    takes traffic step by step instead of all at once."""

    gateway_class: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME)
    step_size_percent: int = Field(default=10, ge=1, le=100)
    interval_s: int = Field(default=30, ge=1)
    max_surge_percent: int = Field(default=10, ge=1, le=100)


class KubernetesSpec(StrictSection):
    # The image every pod runs (platform/image/).
    image: str = Field(default="meridian:0.1.0", min_length=1, max_length=512, pattern=r"^\S+$")
    # Each region's Ray head: Serve's controller and proxy, the region's control app; no model replica.
    head: PodResources = PodResources(cpu="2", memory="4Gi")
    # Each region's Ray worker: one replica's engine. Its CPUs are `ray.cpus_per_region_node`.
    worker_memory: str = Field(default="16Gi", pattern=QUANTITY)
    router: RouterOnKubernetes = RouterOnKubernetes()
    global_loop: PodResources = PodResources(cpu="250m", memory="512Mi")
    # The Secret the user creates with the API keys, one entry per `router.auth.keys[].key_env`.
    api_keys_secret: str = Field(default="meridian-api-keys", max_length=253, pattern=OBJECT_NAME)
    # The PersistentVolumeClaim holding `router.locate.geoip_database`, mounted read-only.
    geoip_claim: str = Field(default="meridian-geoip", max_length=253, pattern=OBJECT_NAME)
    # Unset: KubeRay's default upgrade, a new cluster that takes all traffic once ready.
    incremental_upgrade: IncrementalUpgrade | None = None
