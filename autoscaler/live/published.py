"""What a region's loops tell each other, in its cluster's internal KV: each model's
latest scaling decision (`ScalingView`, written by that model's policy in Serve's
controller; the region's `/status` and its capacity loop read their sum), what its
capacity loop could not place (`CapacityReport`, read by `/status`, whence the global
loop), and the floor the global loop sets for it (`FleetFloor`, written by the region's
control app, read by its policy). Every key is the region's slug.

Readers get the typed message or None; a malformed one raises `MalformedMessage`, which
the reader logs, counts and drops.
"""

from __future__ import annotations

import functools
import logging

from autoscaler.policy.region_view import region_view
from meridian_core.contracts import MAX_MODELS, CapacityReport, FleetFloor, MalformedMessage, ScalingView, parse

KV_NAMESPACE = "meridian"


def decisions_prefix(region: str) -> str:
    return f"autoscale:{region}:"


def decision_key(region: str, model: str) -> str:
    return decisions_prefix(region) + model


def floor_key(region: str) -> str:
    return f"floor:{region}"


def capacity_key(region: str) -> str:
    return f"capacity:{region}"


def publish(region: str, model: str, view: ScalingView) -> None:
    """One model's decision, beside the other models' of its region."""
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(decision_key(region, model), view.model_dump_json(), overwrite=True, namespace=KV_NAMESPACE)


def read_views(region: str) -> dict[str, ScalingView]:
    """Each model's latest decision, by model. One that breaks its contract raises: a sum
    or a split without it is no stand-in."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

    prefix = decisions_prefix(region)
    views: dict[str, ScalingView] = {}
    for key in _internal_kv_list(prefix, namespace=KV_NAMESPACE)[:MAX_MODELS]:
        raw = _internal_kv_get(key, namespace=KV_NAMESPACE)
        if raw:
            views[key.decode(errors="replace").removeprefix(prefix)] = parse(ScalingView, raw)
    return views


def read_published(region: str) -> ScalingView | None:
    """The region's decision: the sum of its models' (autoscaler/policy/region_view.py)."""
    return region_view(read_views(region))


def publish_floor(region: str, floor: FleetFloor | None) -> None:
    """The global loop's floor for a region, or None to lift it."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    if floor is None:
        _internal_kv_del(floor_key(region), namespace=KV_NAMESPACE)
    else:
        _internal_kv_put(floor_key(region), floor.model_dump_json(), overwrite=True, namespace=KV_NAMESPACE)


def read_floor(region: str) -> FleetFloor | None:
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(floor_key(region), namespace=KV_NAMESPACE)
    return parse(FleetFloor, raw) if raw else None


def publish_capacity(region: str, report: CapacityReport) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(capacity_key(region), report.model_dump_json(), overwrite=True, namespace=KV_NAMESPACE)


def read_capacity(region: str) -> CapacityReport | None:
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(capacity_key(region), namespace=KV_NAMESPACE)
    return parse(CapacityReport, raw) if raw else None


@functools.cache
def _malformed_counter():  # type: ignore[no-untyped-def]
    from ray.util.metrics import Counter

    return Counter(
        "meridian_malformed_messages",
        description="Messages dropped because they broke their contract (meridian_core/contracts.py).",
        tag_keys=("contract", "reader"),
    )


def drop_malformed(error: MalformedMessage, reader: str, log: logging.Logger) -> None:
    """Log and count a message that failed its contract; the caller then drops it.
    Counted in Ray's metrics (`meridian_malformed_messages_total{contract, reader}`),
    which Ray exports from whichever Ray process read it."""
    log.warning("%s dropped a %s", reader, error)
    try:
        _malformed_counter().inc(1, tags={"contract": error.contract, "reader": reader})
    except Exception as failure:  # the count is best effort; the drop is not
        log.warning("could not count a malformed message: %s", failure)
