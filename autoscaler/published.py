"""What the autoscaler's loops tell each other, in Ray's internal KV: each region's
latest decision (written by its policy in Serve's controller, read by the region's
`/status`) and the floor the global loop sets for it (written by the capacity loop,
read by the region's policy)."""

from __future__ import annotations

import json
from typing import Any

KV_NAMESPACE = "meridian"


def decision_key(app_name: str) -> str:
    return f"autoscale:{app_name}"


def publish(app_name: str, view: dict[str, Any]) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(decision_key(app_name), json.dumps(view), overwrite=True, namespace=KV_NAMESPACE)


def read_published(app_name: str) -> dict[str, Any] | None:
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(decision_key(app_name), namespace=KV_NAMESPACE)
    return json.loads(raw) if raw else None


def floor_key(app_name: str) -> str:
    return f"floor:{app_name}"


def publish_floor(app_name: str, floor: dict[str, Any] | None) -> None:
    """The global loop's floor for a region ({replicas, reason}), or None to lift it."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    if floor is None:
        _internal_kv_del(floor_key(app_name), namespace=KV_NAMESPACE)
    else:
        _internal_kv_put(floor_key(app_name), json.dumps(floor), overwrite=True, namespace=KV_NAMESPACE)


def read_floor(app_name: str) -> dict[str, Any] | None:
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(floor_key(app_name), namespace=KV_NAMESPACE)
    return json.loads(raw) if raw else None
