"""A region's scaling view as the sum of its models' views (autoscaler/policy/region_view.py)."""

from __future__ import annotations

from autoscaler.policy.region_view import STALE_AFTER_S, region_view
from meridian_core.contracts import MAX_REASON, ScalingView


def view(target: int, at: float, reason: str = "demand", measured: bool = True, cold_start_s: float = 60.0):
    return ScalingView(
        target=target,
        own_target=target - 1,
        reason=reason,
        ready=target - 1,
        starting=1,
        cold_start_s=cold_start_s,
        cold_start_measured=measured,
        min_replicas=1,
        max_replicas=8,
        recent_requests=10 * target,
        at=at,
    )


def test_no_view_is_none_and_one_view_is_itself():
    assert region_view({}) is None
    only = view(3, 100.0)
    assert region_view({"chat": only}) == only


def test_models_views_are_summed_and_the_slowest_cold_start_counts():
    chat = view(3, 100.0, "chat demand", cold_start_s=90.0)
    embed = view(2, 97.0, "embed demand", measured=False, cold_start_s=20.0)
    region = region_view({"embed": embed, "chat": chat})
    assert (region.target, region.own_target, region.ready, region.starting) == (5, 3, 3, 2)
    assert (region.min_replicas, region.max_replicas, region.recent_requests) == (2, 16, 50)
    assert region.cold_start_s == 90.0 and not region.cold_start_measured and region.at == 100.0
    assert region.reason == "chat: chat demand; embed: embed demand"


def test_a_model_that_stopped_publishing_drops_out():
    chat = view(3, 1000.0)
    retired = view(4, 1000.0 - STALE_AFTER_S - 1.0)
    assert region_view({"chat": chat, "retired": retired}) == chat


def test_the_joined_reason_stays_within_its_bound():
    long = "x" * MAX_REASON
    region = region_view({"a": view(1, 5.0, long), "b": view(1, 5.0, long)})
    assert len(region.reason) == MAX_REASON
