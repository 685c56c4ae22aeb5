"""A region's scaling view from its models' views. Every autoscaled model's deployment
runs its own policy and publishes its own decision; the region's nodes, its `/status`
and the global loop count replicas of every model, so they see the sum."""

from __future__ import annotations

from collections.abc import Mapping

from meridian_core.contracts import MAX_COUNT, MAX_REASON, ScalingView

# Every model's policy runs in the region's one Serve controller and decides every few
# seconds; a view this much older than the newest is a model no longer deployed.
STALE_AFTER_S = 60.0


def region_view(views: Mapping[str, ScalingView]) -> ScalingView | None:
    """The region's view from its models' views, by model; None when there is none."""
    if not views:
        return None
    newest = max(view.at for view in views.values())
    live = {model: view for model, view in sorted(views.items()) if view.at >= newest - STALE_AFTER_S}
    if len(live) == 1:
        return next(iter(live.values()))

    def total(field: str) -> int:
        return min(sum(getattr(view, field) for view in live.values()), MAX_COUNT)

    return ScalingView(
        target=total("target"),
        own_target=total("own_target"),
        reason="; ".join(f"{model}: {view.reason}" for model, view in live.items())[:MAX_REASON],
        ready=total("ready"),
        starting=total("starting"),
        cold_start_s=max(view.cold_start_s for view in live.values()),
        cold_start_measured=all(view.cold_start_measured for view in live.values()),
        min_replicas=total("min_replicas"),
        max_replicas=total("max_replicas"),
        recent_requests=total("recent_requests"),
        at=newest,
    )
