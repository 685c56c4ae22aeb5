"""Every manifest of the platform, as the files `meridian render kubernetes` writes:
one RayService per region Meridian would start, the spec's ConfigMap, the router, the
global loop, and a kustomization that lists them. The same spec gives the same bytes."""

from __future__ import annotations

from typing import Any

from meridian.kubernetes.control_plane import global_loop_deployment, router_objects, spec_config_map
from meridian.kubernetes.objects import dump_yaml_all
from meridian.kubernetes.ray_service import ray_service
from meridian_core.spec import PlatformSpec


def manifests(spec: PlatformSpec, image: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """File name -> the objects in it; `image` replaces the spec's `kubernetes.image`.
    Raises RenderError naming the field that cannot be rendered."""
    if image is not None:
        spec = spec.model_copy(update={"kubernetes": spec.kubernetes.model_copy(update={"image": image})})
    files = {f"{r.slug}-rayservice.yaml": [ray_service(spec, r)] for r in spec.managed_regions}
    files["spec-configmap.yaml"] = [spec_config_map(spec)]
    files["router.yaml"] = router_objects(spec)
    files["global-loop.yaml"] = [global_loop_deployment(spec)]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(files),
    }
    return {**files, "kustomization.yaml": [kustomization]}


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return dump_yaml_all(objects)
