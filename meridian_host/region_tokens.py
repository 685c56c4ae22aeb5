"""Secrets of the clusters `meridian up` starts, two random ones per region, kept in the
platform's state directory (readable by its owner only):

- the region token, which the region's apps require of every request: their Serve
  config holds only the SHA-256; the router and the global loop get the token in their
  environment, under the variable the region's spec names (`RegionSpec.token_env`);
- the cluster's Ray token (Ray's token authentication, `RAY_AUTH_MODE=token`): every
  process that joins or talks to the cluster has it in `RAY_AUTH_TOKEN`, and calls to
  its dashboard send it as a bearer token. An existing cluster's Ray token is the
  user's, in this environment's `RAY_AUTH_TOKEN` if it has one."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from meridian_core.spec import RegionSpec
from meridian_host.platform_state import ClusterState, PlatformState


def region_token(state: PlatformState, region: RegionSpec) -> str:
    """The region's token, made on first use and the same on every later call."""
    return _secret(state.cluster_dir(region.slug) / "control-token")


def cluster_ray_token(state: PlatformState, cluster: ClusterState) -> str | None:
    """The cluster's Ray token: made for a cluster Meridian started (it has a Ray temp
    dir), the user's `RAY_AUTH_TOKEN` (if any) for an existing one."""
    if cluster.ray_temp_dir is None:
        return os.environ.get("RAY_AUTH_TOKEN")
    return _secret(state.cluster_dir(cluster.slug) / "ray-token")


def ray_auth_env(state: PlatformState, cluster: ClusterState) -> dict[str, str]:
    """What a process joining or calling `cluster` needs in its environment beyond what
    it inherits: a cluster Meridian started takes token authentication with its token."""
    if cluster.ray_temp_dir is None:
        return {}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster_ray_token(state, cluster) or ""}


def dashboard_headers(state: PlatformState, cluster: ClusterState) -> dict[str, str]:
    """The bearer header the cluster's dashboard requires, when it has a Ray token."""
    token = cluster_ray_token(state, cluster)
    return {"Authorization": f"Bearer {token}"} if token else {}


def router_admin_token(state: PlatformState) -> str:
    """The token the router's operational endpoints require when it has API keys."""
    return _secret(state.directory / "router-admin-token")


def _secret(path: Path) -> str:
    """The random secret kept at `path`, made on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
    return path.read_text().strip()


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
