"""The spec the router and the global loop read inside the Kubernetes cluster.

It is the user's spec with each region Meridian would start turned into an existing
cluster: KubeRay's head Service is its address, and KubeRay's Serve Service carries its
endpoint. The router listens on all interfaces; the GeoIP database is where its volume
is mounted. What only `meridian up` reads (ports on one machine, price catalogs on the
user's disk, the `kubernetes:` section itself) is left out.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from meridian.kubernetes.ray_service import DASHBOARD_PORT, GCS_PORT, head_service_host, serve_service_url
from meridian_core.spec import PlatformSpec

SPEC_DIR = "/etc/meridian"
SPEC_FILE = "spec.yaml"
GEOIP_DIR = "/var/lib/meridian/geoip"
ROUTER_PORT = 8080


def geoip_path(spec: PlatformSpec) -> str | None:
    database = spec.router.locate.geoip_database
    return None if database is None else str(PurePosixPath(GEOIP_DIR) / database.name)


def in_cluster_spec(spec: PlatformSpec) -> dict[str, Any]:
    data = spec.model_dump(mode="json", exclude_defaults=True, exclude={"ray", "kubernetes"})
    for region, dumped in zip(spec.regions, data["regions"], strict=True):
        if region.cluster.managed:
            host = head_service_host(region)
            dumped["cluster"] = {
                "managed": False,
                "address": f"{host}:{GCS_PORT}",
                "dashboard_url": f"http://{host}:{DASHBOARD_PORT}",
                "token_env": region.token_env,
            }
            dumped["endpoint"] = serve_service_url(region)
    router = data.setdefault("router", {})
    router["host"], router["port"] = "0.0.0.0", ROUTER_PORT
    if spec.router.locate.geoip_database is not None:
        router["locate"]["geoip_database"] = geoip_path(spec)
    if "capacity" in data:
        data["capacity"].pop("catalog_files", None)
    return data
