"""A region's scaling view from its models' views, and the region's floor split over them.

Every autoscaled model's deployment runs its own policy and publishes its own decision;
the region's nodes, its `/status` and the global loop count replicas of every model, so
they see the sum. The global loop's floor is for that sum too, so each model takes only
its share of the replicas the floor adds."""

from __future__ import annotations

from collections.abc import Mapping

from meridian_core.contracts import MAX_COUNT, MAX_REASON, ScalingView

# Every model's policy runs in the region's one Serve controller and decides every few
# seconds; a view this much older than the newest is a model no longer deployed.
STALE_AFTER_S = 60.0


def live_views(views: Mapping[str, ScalingView]) -> dict[str, ScalingView]:
    """The views of the models still deployed, by model name in order."""
    if not views:
        return {}
    newest = max(view.at for view in views.values())
    return {model: view for model, view in sorted(views.items()) if view.at >= newest - STALE_AFTER_S}


def region_view(views: Mapping[str, ScalingView]) -> ScalingView | None:
    """The region's view from its models' views, by model; None when there is none."""
    live = live_views(views)
    if not live:
        return None
    newest = max(view.at for view in live.values())
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


def model_floor(floor_replicas: int, model: str, views: Mapping[str, ScalingView]) -> int:
    """`model`'s share of a region floor of `floor_replicas`, given every live model's view
    (`model`'s own among them, with its latest own target): its own target plus the
    replicas the floor adds that fall to it. They go one at a time to the model with the
    most recent requests per replica (the likeliest to be asked for), within its
    `max_replicas`, ties to the first by name; so the models' shares sum to the floor."""
    live = live_views(views)
    if model not in live:
        return floor_replicas
    planned = {name: view.own_target for name, view in live.items()}
    for _ in range(max(0, floor_replicas - sum(planned.values()))):
        room = [name for name in planned if planned[name] < live[name].max_replicas]
        if not room:
            break
        # max() keeps the first of equals, and `room` is in name order.
        chosen = max(room, key=lambda name: (live[name].recent_requests + 1) / (planned[name] + 1))
        planned[chosen] += 1
    return planned[model]
