"""Control tokens for the clusters `meridian up` starts: one random token per region,
kept in the platform's state directory (readable by its owner only). The region's Serve
app holds only its SHA-256; the global loop gets the token in its environment, under
the variable the region's spec names (`RegionSpec.token_env`)."""

from __future__ import annotations

import hashlib
import os
import secrets

from meridian_core.spec import RegionSpec
from meridian_host.platform_state import PlatformState


def region_token(state: PlatformState, region: RegionSpec) -> str:
    """The region's token, made on first use and the same on every later call."""
    path = state.cluster_dir(region.slug) / "control-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
