"""The policies the simulator compares, each at its published defaults and over a sweep
of its main knob, so every baseline is judged at its best-tuned setting."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autoscaler.policy.signals import ScalingPolicy
from autoscaler.policy.slo_policy import SloPolicy, SloPolicyConfig
from autoscaler.sim.demand_replay import DemandReplayResult
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
from autoscaler.sim.traces import Trace
from meridian_core.replica_model import ReplicaProfile
from meridian_core.spec import AutoscalingSpec, SLOSpec

POLICIES = ("meridian", "ray-serve", "skyserve", "knative-kpa", "static")

RAY_TARGETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
SKY_TARGET_QPS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
KNATIVE_TARGETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 100.0)
MERIDIAN_ATTAINMENT = (0.99,)
# Static counts are swept from 1 to this multiple of the trace's peak prefill need.
STATIC_PEAK_MULTIPLE = 1.5
STATIC_MAX_SETTINGS = 24


@dataclass(frozen=True)
class Contender:
    policy: ScalingPolicy
    setting: str


def peak_replicas(trace: Trace, profile: ReplicaProfile, bin_s: float = 10.0) -> float:
    """Replicas the busiest `bin_s` of the trace keeps fully busy with prefill alone."""
    if not len(trace):
        return 1.0
    bins = np.bincount((trace.arrival_s // bin_s).astype(np.int64), weights=trace.prompt_tokens)
    return float(bins.max()) / bin_s / profile.prefill_tokens_per_s


def contenders(
    name: str, trace: Trace, profile: ReplicaProfile, autoscaling: AutoscalingSpec, slo: SLOSpec
) -> list[Contender]:
    """Every setting of policy `name` for one region with the spec's `autoscaling` and `slo`;
    the peers get the same replica bounds."""
    bounds = {"min_replicas": autoscaling.min_replicas, "max_replicas": autoscaling.max_replicas}
    if name == "meridian":
        return [
            Contender(
                SloPolicy(SloPolicyConfig(autoscaling=autoscaling, slo=slo, profile=profile, attainment=a)),
                f"attainment={a:g}",
            )
            for a in MERIDIAN_ATTAINMENT
        ]
    if name == "ray-serve":
        return [
            Contender(RayServeDefault(RayServeConfig(target_ongoing_requests=t, **bounds)), f"target_ongoing={t:g}")
            for t in RAY_TARGETS
        ]
    if name == "skyserve":
        return [
            Contender(SkyServeRequestRate(SkyServeConfig(target_qps_per_replica=q, **bounds)), f"target_qps={q:g}")
            for q in SKY_TARGET_QPS
        ]
    if name == "knative-kpa":
        return [
            Contender(KnativeKPA(KnativeConfig(concurrency_target=c, **bounds)), f"concurrency={c:g}")
            for c in KNATIVE_TARGETS
        ]
    if name == "static":
        top = max(math.ceil(peak_replicas(trace, profile) * STATIC_PEAK_MULTIPLE), 1)
        counts = sorted({max(int(round(x)), 1) for x in np.linspace(1, top, min(top, STATIC_MAX_SETTINGS))})
        return [
            Contender(StaticPeak(StaticConfig(replicas=n, min_replicas=0, max_replicas=max(n, 1))), f"replicas={n}")
            for n in counts
        ]
    raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")


def opening_replicas(trace: Trace, profile: ReplicaProfile, window_s: float = 60.0) -> int:
    """Replicas the trace's first minute keeps busy with prefill alone: the same,
    policy-neutral warm start for every autoscaler, so none is judged on a cold fleet
    meeting fleet-scale load."""
    opening = trace.prompt_tokens[trace.arrival_s < window_s].sum() / window_s
    return math.ceil(opening / profile.prefill_tokens_per_s - 1e-9)


def initial_replicas(contender: Contender, trace: Trace, profile: ReplicaProfile, min_replicas: int) -> int:
    """Static starts with its count; every autoscaler from the same opening count."""
    if isinstance(contender.policy, StaticPeak):
        return contender.policy.config.replicas
    return max(min_replicas, 1, opening_replicas(trace, profile))


def best_settings(results: list[DemandReplayResult], goal: float) -> dict[str, DemandReplayResult]:
    """Per policy: the cheapest setting reaching `goal` SLO attainment, else the one closest to it."""
    best: dict[str, DemandReplayResult] = {}
    for result in results:
        current = best.get(result.policy)
        if current is None or _better(result, current, goal):
            best[result.policy] = result
    return best


def _better(a: DemandReplayResult, b: DemandReplayResult, goal: float) -> bool:
    a_ok, b_ok = a.slo_attainment >= goal, b.slo_attainment >= goal
    if a_ok != b_ok:
        return a_ok
    if a_ok:
        return a.gpu_hours < b.gpu_hours
    return a.slo_attainment > b.slo_attainment
