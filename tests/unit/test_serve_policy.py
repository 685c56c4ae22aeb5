"""The Ray Serve adapter of Meridian's policy, driven with contexts shaped like Serve's
AutoscalingContext (the fields the adapter reads)."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import pytest

from autoscaler.live import serve_policy
from autoscaler.live.serve_policy import RegionAutoscalingPolicy, latest_reports
from meridian.serve_config import serve_config
from meridian_core.contracts import FleetFloor, ReplicaReport, ScalingView
from meridian_core.spec import AutoscalingSpec, parse_spec

Point = namedtuple("Point", "timestamp value")


@pytest.fixture
def floors(monkeypatch) -> dict[str, FleetFloor]:
    """The fleet floors the adapter reads, by app name (none unless a test sets one)."""
    table: dict[str, FleetFloor] = {}
    monkeypatch.setattr(serve_policy, "read_floor", table.get)
    return table


@pytest.fixture
def other_models(monkeypatch) -> dict[str, ScalingView]:
    """The views the region's other models published, as the adapter reads them back."""
    views: dict[str, ScalingView] = {}
    monkeypatch.setattr(serve_policy, "read_views", lambda app: dict(views))
    return views


@pytest.fixture
def published(monkeypatch, floors, other_models) -> list[dict]:
    views: list[dict] = []

    def publish(app: str, model: str, view) -> None:
        views.append({"app": app, "model": model, **view.model_dump()})

    monkeypatch.setattr(serve_policy, "publish", publish)
    return views


def policy(profile: str = "smollm2-135m-cpu", **overrides) -> RegionAutoscalingPolicy:
    """The adapter built as Serve builds it: from the policy_kwargs the Serve config carries."""
    scaling = AutoscalingSpec(
        **{"min_replicas": 1, "max_replicas": 4, "idle_to_zero_s": 60.0, "cold_start_s": 60.0, **overrides}
    )
    parsed = parse_spec(spec_with(scaling, profile))
    _, model_app = serve_config(parsed, parsed.regions[0])["applications"]
    # What deployments/model_app.py puts in the deployment's autoscaling_config.
    from deployments.model_app import ModelAppArgs, deployment_config_for

    config = deployment_config_for(ModelAppArgs.model_validate(model_app["args"]))
    return RegionAutoscalingPolicy(**config["autoscaling_config"]["policy"]["policy_kwargs"])


def spec_with(scaling: AutoscalingSpec, profile: str) -> dict:
    return {
        "models": [{"id": "m"}],
        "regions": [
            {
                "name": "local/us-east",
                "location": {"lat": 39.0, "lon": -77.5},
                "autoscaling": scaling.model_dump(),
                "profile": profile,
            }
        ],
    }


def context(
    now: float,
    ready: int,
    target: int,
    reports: dict[str, dict[str, float]],
    state: dict | None = None,
    queued: float | None = 0.0,
    ongoing: float | None = 0.0,
):
    raw: dict[str, dict[str, list[Point]]] = {}
    for replica, metrics in reports.items():
        for name, value in metrics.items():
            raw.setdefault(name, {})[replica] = [Point(now - 3, 0.0), Point(now - 1, value)]
    return SimpleNamespace(
        app_name="local-us-east:m",  # the model's own app; the policy keys by its region
        deployment_name="RegionLLMServer:m",
        current_time=now,
        current_num_replicas=ready,
        target_num_replicas=target,
        raw_metrics=raw,
        total_queued_requests=queued,
        total_num_requests=ongoing,
        policy_state=state or {},
    )


def load(arrived: float, prompt: float, output: float, waiting: float = 0.0) -> dict[str, float]:
    return {
        "arrived_total": arrived,
        "prompt_tokens_total": prompt,
        "output_tokens_total": output,
        "first_tokens_total": arrived,
        "running": 16.0,
        "waiting": waiting,
        "kv_cache_usage": 0.3,
        "ttft_p95_s": -1.0,
        "itl_p95_s": -1.0,
    }


def test_latest_reports_take_each_replicas_newest_point():
    raw = {"running": {"r1": [Point(2.0, 5.0), Point(1.0, 9.0)]}, "waiting": {"r1": [], "r2": [Point(1.0, 3.0)]}}
    assert latest_reports(raw) == {"r1": ReplicaReport(running=5.0), "r2": ReplicaReport(waiting=3.0)}
    assert latest_reports(None) == {}


def test_serves_own_metrics_beside_a_report_are_not_the_replicas_and_do_not_void_it():
    # Serve's high-throughput mode pushes `running_requests` with every replica's stats.
    raw = {
        "running_requests": {"r1": [Point(1.0, 7.0)], "r2": [Point(1.0, 3.0)]},
        "running": {"r1": [Point(1.0, 5.0)]},
    }
    assert latest_reports(raw) == {"r1": ReplicaReport(running=5.0)}


def test_a_replica_report_that_breaks_its_contract_is_dropped_not_fatal(published):
    raw = {"running": {"r1": [Point(1.0, 5.0)], "r2": [Point(1.0, float("inf"))]}}
    assert latest_reports(raw) == {"r1": ReplicaReport(running=5.0)}
    scaler = policy()
    target, _ = scaler(context(100.0, 1, 1, {"r1": load(0, 0, 0), "r2": {**load(0, 0, 0), "waiting": float("nan")}}))
    assert target == 1 and published[-1]["ready"] == 1  # the decision is made on what could be read


def test_heavy_demand_scales_up_and_the_decision_is_published(published, caplog):
    caplog.set_level("INFO", logger="ray.serve")
    scaler = policy()
    target, state = scaler(context(100.0, 1, 1, {"r1": load(0, 0, 0)}))
    assert target == 1
    # 60 requests of 1,000 prompt tokens in 5 s: 12,000 prompt tok/s, ~5x a CPU replica.
    target, state = scaler(context(105.0, 1, 1, {"r1": load(60, 60_000, 1_000, waiting=40)}, state))
    assert target == 4  # capped at max_replicas
    assert published[-1]["target"] == 4 and published[-1]["app"] == "local-us-east" and published[-1]["model"] == "m"
    assert published[-1]["reason"] and published[-1]["starting"] == 0
    assert "meridian" in state  # the pure policy's state rides in Serve's policy_state
    # The change and its reason go to Serve's logger, so the controller's log file has them.
    changes = [r for r in caplog.records if r.getMessage().startswith("autoscale local-us-east m:")]
    assert [r.getMessage().split(" (")[0] for r in changes] == [
        "autoscale local-us-east m: 1 -> 1",
        "autoscale local-us-east m: 1 -> 4",
    ]
    assert changes[-1].name.startswith("ray.serve.") and published[-1]["reason"] in changes[-1].getMessage()
    scaler(context(110.0, 1, 4, {"r1": load(120, 120_000, 2_000, waiting=40)}, state))
    assert published[-1]["at"] == 110.0 and published[-1]["target"] == 4  # decided again, to the same target...
    assert len([r for r in caplog.records if r.getMessage().startswith("autoscale")]) == 2  # ...so no line


def test_the_region_s_profile_plans_its_replicas(published):
    # The same 12,000 prompt tok/s that swamps CPU replicas is well within one H100's 20,000.
    for profile, expected in (("smollm2-135m-cpu", 4), ("llama-3.1-8b-h100", 1)):
        scaler = policy(profile)
        _, state = scaler(context(100.0, 1, 1, {"r1": load(0, 0, 0)}))
        target, _ = scaler(context(105.0, 1, 1, {"r1": load(60, 60_000, 1_000)}, state))
        assert target == expected, profile


def test_between_decisions_the_current_target_stands(published):
    scaler = policy()
    scaler(context(100.0, 1, 1, {"r1": load(0, 0, 0)}))
    decisions = len(published)
    target, _ = scaler(context(102.0, 1, 3, {"r1": load(60, 60_000, 1_000)}))
    assert target == 3 and len(published) == decisions


def test_a_region_floor_is_shared_with_the_regions_other_models(published, floors, other_models):
    scaler = policy(min_replicas=0, max_replicas=4)
    _, state = scaler(context(100.0, 0, 0, {}))
    assert published[-1]["own_target"] == 1  # not idle for idle_to_zero_s yet
    # The region's other model runs 2 of at most 3 and has seen the requests this one has not.
    other = {"own_target": 2, "target": 2, "max_replicas": 3, "recent_requests": 20, "at": 106.0}
    mine = {key: value for key, value in published[-1].items() if key not in ("app", "model")}
    other_models["e"] = ScalingView.model_validate({**mine, **other})
    # A region floor of 4 adds one replica to the 3 the models want, and it falls to the
    # other model: this one stays at 1 (it took the whole floor, 4, before floors were shared).
    floors["local-us-east"] = FleetFloor(replicas=4, reason="fleet minimum of 4 warm")
    target, state = scaler(context(106.0, 1, 1, {}, state))
    assert target == 1 and published[-1]["target"] == 1
    # A floor of 5 adds two: the other model can take one more, this one the last.
    floors["local-us-east"] = FleetFloor(replicas=5, reason="fleet minimum of 5 warm")
    target, _ = scaler(context(112.0, 1, 1, {}, state))
    assert target == 2 and published[-1]["reason"] == "fleet minimum of 5 warm"


def test_requests_a_handle_holds_at_zero_replicas_wake_the_region(published):
    """At zero, no replica reports anything: the requests Serve's fallback proxy holds for
    the model (ctx.total_queued_requests) are the only sign of demand."""
    scaler = policy(min_replicas=0, max_replicas=2, idle_to_zero_s=20.0)
    _, state = scaler(context(100.0, 0, 0, {}))
    target, state = scaler(context(130.0, 0, 0, {}, state))
    assert target == 0 and "scale to zero" in published[-1]["reason"]
    target, state = scaler(context(136.0, 0, 0, {}, state, queued=None))  # Serve may not know yet
    assert target == 0
    target, state = scaler(context(142.0, 0, 0, {}, state, queued=2, ongoing=2))
    assert target == 1 and published[-1]["target"] == 1
    # The replica is up and runs them (long generations), none of them reported yet: past
    # the scale-down window it is kept for them, not taken away under them.
    target, state = scaler(context(210.0, 1, 1, {}, state, queued=0, ongoing=2))
    assert target == 1 and "2 request(s) in the region" in published[-1]["reason"]
    target, _ = scaler(context(216.0, 1, 1, {}, state, queued=0, ongoing=0))
    assert target == 0 and "scale to zero" in published[-1]["reason"]


def test_a_fleet_floor_raises_an_idle_regions_target_up_to_its_maximum(published, floors):
    scaler = policy(min_replicas=0, max_replicas=2)
    _, state = scaler(context(100.0, 0, 0, {}))
    floors["local-us-east"] = FleetFloor(replicas=3, reason="serves gcp/europe-west1: out of capacity there")
    target, state = scaler(context(106.0, 0, 0, {}, state))
    assert target == 2 and published[-1]["reason"] == floors["local-us-east"].reason
    assert published[-1]["own_target"] == 1  # what the global loop plans the next floor from
    del floors["local-us-east"]
    # Without the floor the policy's own answer stands: no demand, but not idle for
    # idle_to_zero_s yet, so one replica.
    target, _ = scaler(context(112.0, 0, 2, {}, state))
    assert target == 1
    assert "kept at 1" in published[-1]["reason"]
