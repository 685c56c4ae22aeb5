"""Each peer autoscaler reproduces its documented behaviour on synthetic signals."""

from __future__ import annotations

import json

from autoscaler.policy.signals import DemandSample, PolicyState, RegionSignals, ScalingPolicy
from autoscaler.sim.peer_autoscalers import (
    KnativeConfig,
    KnativeKPA,
    RayServeConfig,
    RayServeDefault,
    SkyServeConfig,
    SkyServeRequestRate,
    StaticConfig,
    StaticPeak,
)


def signals(now: float, ready: int, ongoing: int = 0, rps: float = 0.0) -> RegionSignals:
    demand = tuple(DemandSample(now - 120 + i, 1.0, round(rps), 0, 0, round(rps)) for i in range(120))
    return RegionSignals(
        now_s=now,
        demand=demand,
        ready=ready,
        starting=0,
        stopping=0,
        running=ongoing,
        waiting=0,
        kv_usage=0.0,
        ttft_ms=None,
        itl_ms=None,
        cold_start_s=60.0,
    )


def run(policy: ScalingPolicy, times: list[float], make: object) -> list[int]:
    state: PolicyState = {}
    targets = []
    for t in times:
        decision, state = policy.decide(make(t), state)  # type: ignore[operator]
        json.dumps(state)
        targets.append(decision.target)
    return targets


def test_ray_serve_waits_upscale_delay_then_jumps_to_ongoing_over_target() -> None:
    policy = RayServeDefault(RayServeConfig(target_ongoing_requests=2, max_replicas=100))
    state: PolicyState = {"target": 1}
    seen = {}
    for t in range(0, 40):
        decision, state = policy.decide(signals(float(t), ready=1, ongoing=20), state)
        seen[t] = decision.target
    assert seen[29] == 1
    # 20 ongoing / 2 per replica = 10, taken once 30 s have passed.
    assert seen[30] == 10


def test_ray_serve_averages_over_the_look_back_window() -> None:
    policy = RayServeDefault(RayServeConfig(target_ongoing_requests=2, upscale_delay_s=0, max_replicas=100))
    state: PolicyState = {"target": 1}
    for t in range(0, 15):
        _, state = policy.decide(signals(float(t), ready=1, ongoing=0), state)
    decision, _ = policy.decide(signals(15.0, ready=1, ongoing=32), state)
    # One sample of 32 among 16 in the 30 s window: mean 2 → 1 replica, not 16.
    assert decision.target == 1


def test_ray_serve_downscale_waits_600_s_and_resets_on_a_reversal() -> None:
    policy = RayServeDefault(RayServeConfig(target_ongoing_requests=2, look_back_period_s=1, max_replicas=100))
    state: PolicyState = {"target": 8}
    targets = {}
    for t in range(0, 950):
        ongoing = 40 if t == 300 else 2
        decision, state = policy.decide(signals(float(t), ready=8, ongoing=ongoing), state)
        targets[t] = decision.target
    # Without the spike the target would drop at 600 s; the spike (an upscale wish at
    # 300–301 s) restarted the downscale clock at 302 s.
    assert all(v == 8 for t, v in targets.items() if t < 902)
    assert targets[902] == 1


def test_ray_serve_scales_from_zero_without_delay() -> None:
    policy = RayServeDefault(RayServeConfig(min_replicas=0))
    decision, _ = policy.decide(signals(0.0, ready=0, ongoing=3), {"target": 0})
    assert decision.target == 1


def test_skyserve_needs_15_consecutive_decisions_to_scale_up() -> None:
    policy = SkyServeRequestRate(SkyServeConfig(target_qps_per_replica=1, max_replicas=100))
    assert policy.up_threshold == 15 and policy.down_threshold == 60
    state: PolicyState = {"target": 1}
    targets = []
    for k in range(16):
        decision, state = policy.decide(signals(20.0 * k + 120, ready=1, rps=5), state)
        targets.append(decision.target)
    assert targets[13] == 1
    assert targets[14] == 5  # the 15th decision, 300 s of hysteresis at 20 s a decision


def test_skyserve_downscale_needs_60_decisions_and_an_equal_one_resets() -> None:
    policy = SkyServeRequestRate(SkyServeConfig(target_qps_per_replica=1, max_replicas=100))
    state: PolicyState = {"target": 5}
    targets = []
    for k in range(95):
        rps = 5 if k == 30 else 1
        decision, state = policy.decide(signals(20.0 * k + 120, ready=5, rps=rps), state)
        targets.append(decision.target)
    # The equal decision at k=30 reset the count; 60 more below-target decisions follow.
    assert all(t == 5 for t in targets[:90])
    assert targets[90] == 1


def test_knative_stable_mode_targets_70_percent_of_concurrency_target() -> None:
    policy = KnativeKPA(KnativeConfig(concurrency_target=10, max_replicas=100))
    targets = run(policy, [2.0 * k for k in range(40)], lambda t: signals(t, ready=3, ongoing=21))
    # 21 in flight / (10 · 0.7) = 3 pods, no panic (3 / 3 < 200%).
    assert targets[-1] == 3


def test_knative_panics_at_twice_the_ready_pods_and_does_not_scale_down_in_panic() -> None:
    policy = KnativeKPA(KnativeConfig(concurrency_target=10, max_replicas=100))
    state: PolicyState = {}
    for k in range(30):
        _, state = policy.decide(signals(2.0 * k, ready=2, ongoing=14), state)
    # A burst: the 6 s panic window averages (14, 14, 14, 70) = 28 → 4 pods = 200% of 2 ready.
    decision, state = policy.decide(signals(60.0, ready=2, ongoing=70), state)
    assert decision.reason.startswith("panic")
    assert decision.target >= 4
    high = decision.target
    # The burst ends; while in panic (one stable window), the count never decreases.
    for k in range(1, 29):
        decision, state = policy.decide(signals(60.0 + 2 * k, ready=high, ongoing=7), state)
        assert decision.target == high
    for k in range(29, 40):
        decision, state = policy.decide(signals(60.0 + 2 * k, ready=high, ongoing=7), state)
    assert decision.reason.startswith("stable")
    assert decision.target < high


def test_knative_below_panic_threshold_stays_stable() -> None:
    policy = KnativeKPA(KnativeConfig(concurrency_target=10, max_replicas=100))
    state: PolicyState = {}
    for k in range(30):
        decision, state = policy.decide(signals(2.0 * k, ready=4, ongoing=28), state)
    # 28 / 7 = 4 desired panic pods, 100% of ready: no panic.
    decision, _ = policy.decide(signals(60.0, ready=4, ongoing=49), state)
    assert decision.reason.startswith("stable")


def test_knative_waits_the_grace_period_before_zero() -> None:
    policy = KnativeKPA(KnativeConfig(min_replicas=0))
    targets = run(policy, [2.0 * k for k in range(60)], lambda t: signals(t, ready=1, ongoing=0))
    assert targets[0] == 1
    assert targets[-1] == 0
    assert targets.index(0) * 2.0 >= 30.0


def test_static_never_moves() -> None:
    policy = StaticPeak(StaticConfig(replicas=7))
    targets = run(policy, [0.0, 100.0, 5000.0], lambda t: signals(t, ready=1, ongoing=1000))
    assert targets == [7, 7, 7]
