"""Where a region's latest scaling decision is kept: Ray's internal KV, written by the
policy in Serve's controller, read by the region's `/status`."""

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
