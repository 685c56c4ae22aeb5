"""A region's scaling view as the sum of its models' views, and the region's floor split
over its models (autoscaler/policy/region_view.py)."""

from __future__ import annotations

from autoscaler.policy.region_view import STALE_AFTER_S, model_floor, region_view
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


def demand(own_target: int, recent_requests: int, at: float = 100.0, max_replicas: int = 8) -> ScalingView:
    return view(1, at).model_copy(
        update={"own_target": own_target, "recent_requests": recent_requests, "max_replicas": max_replicas}
    )


def test_a_region_floor_is_split_over_its_models_and_their_shares_sum_to_it():
    # Idle region, fleet floor of 1: one replica in the region, of the model asked for most.
    idle = {"chat": demand(0, 30), "embed": demand(0, 5)}
    assert (model_floor(1, "chat", idle), model_floor(1, "embed", idle)) == (1, 0)
    # A floor of 5 over own targets 2 + 0: the three added go, one at a time, where requests
    # per replica (one more counted on each side) are highest: 41/3 against 10/1, 41/4
    # against 10/1, then 41/5 against 10/1.
    busy = {"chat": demand(2, 40), "embed": demand(0, 9)}
    shares = {model: model_floor(5, model, busy) for model in busy}
    assert shares == {"chat": 4, "embed": 1} and sum(shares.values()) == 5
    # A floor the models' own targets already meet adds nothing to either.
    assert {model: model_floor(2, model, busy) for model in busy} == {"chat": 2, "embed": 0}


def test_a_model_at_its_maximum_leaves_the_floor_to_the_others_and_ties_go_by_name():
    full = {"chat": demand(2, 100, max_replicas=2), "embed": demand(0, 0)}
    assert (model_floor(4, "chat", full), model_floor(4, "embed", full)) == (2, 2)
    tied = {"b": demand(0, 0), "a": demand(0, 0)}
    assert (model_floor(1, "a", tied), model_floor(1, "b", tied)) == (1, 0)


def test_a_stale_models_view_takes_no_share_of_the_floor():
    views = {"chat": demand(0, 0, at=100.0), "gone": demand(0, 50, at=100.0 - STALE_AFTER_S - 1)}
    assert model_floor(1, "chat", views) == 1
