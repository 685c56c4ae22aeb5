"""The autoscaling simulator: known-answer runs on synthetic traces, and the goal on the Azure trace."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from autoscaler.policy.signals import PolicyState, RegionSignals, ScalingDecision
from autoscaler.policy.slo_capacity import Workload, replicas_needed
from autoscaler.policy.slo_policy import SloPolicy, SloPolicyConfig
from autoscaler.sim import lineup, traces
from autoscaler.sim.demand_replay import DemandReplayConfig, DemandReplayResult, simulate
from autoscaler.sim.peer_autoscalers import StaticConfig, StaticPeak
from meridian_core.replica_model import ReplicaProfile
from meridian_core.spec import AutoscalingSpec, SLOSpec

# A replica whose prefill of a 1000-token prompt takes exactly 0.5 s (+ one 1 ms step),
# decoding at 1 ms a step, with room for everything.
PROFILE = ReplicaProfile(
    name="test",
    accelerator="test",
    usd_per_gpu_hour=2.0,
    prefill_tokens_per_s=2000,
    decode_base_s=0.001,
    decode_per_seq_s=0.0,
    kv_capacity_tokens=10_000_000,
    max_num_seqs=10_000,
    max_batched_tokens=4000,
    cold_start_s=30.0,
)
SHARED_TRACE = Path(__file__).resolve().parents[3] / "shared" / "data" / "traces" / "azure_llm_2023_code.csv"


def constant_trace(rate: float, seconds: float, prompt: int = 1000, output: int = 10) -> traces.Trace:
    arrivals = np.arange(0.0, seconds, 1.0 / rate)
    return traces.from_arrays(arrivals, np.full(len(arrivals), prompt), np.full(len(arrivals), output))


def config(**overrides: object) -> DemandReplayConfig:
    values: dict[str, object] = {"profile": PROFILE, "slo_ttft_s": 1.5, "slo_itl_s": 0.1, "warmup_s": 0.0}
    values.update(overrides)
    return DemandReplayConfig(**values)  # type: ignore[arg-type]


def test_one_replica_below_saturation_meets_the_slo_with_the_service_time() -> None:
    trace = constant_trace(rate=1.0, seconds=300)
    result = simulate(trace, StaticPeak(StaticConfig(replicas=1)), config())
    assert result.slo_attainment == 1.0
    # Evenly spaced arrivals never queue: TTFT = 1000/2000 s + one step.
    assert result.ttft_p95_s == pytest.approx(0.501, abs=1e-6)
    assert result.gpu_hours == pytest.approx(300 / 3600, rel=0.01)
    assert result.cost_usd == pytest.approx(2.0 * result.gpu_hours)


def test_an_overloaded_replica_misses_the_slo() -> None:
    # 4 req/s of 0.5 s prefill each: offered load 2 replicas' worth on one replica.
    trace = constant_trace(rate=4.0, seconds=300)
    result = simulate(trace, StaticPeak(StaticConfig(replicas=1)), config())
    assert result.slo_attainment < 0.05
    three = simulate(trace, StaticPeak(StaticConfig(replicas=3)), config(initial_replicas=3))
    assert three.slo_attainment == 1.0


def test_meridian_settles_on_the_replica_count_its_capacity_model_gives() -> None:
    trace = constant_trace(rate=4.0, seconds=900)
    # 0.5 s prompts: their exponential 99th percentile (2.3 s) misses 1.5 s at any count, so
    # the model answers the count whose wait quantile is zero (7), not the limit.
    expected = replicas_needed(PROFILE, Workload(4.0, 1000, 10), 1.5, 0.1, 0.99, 512)
    assert 3 < expected < 512
    policy = SloPolicy(
        SloPolicyConfig(
            autoscaling=AutoscalingSpec(min_replicas=3, max_replicas=512),
            slo=SLOSpec(ttft_p95_ms=1500, itl_p95_ms=100),
            profile=PROFILE,
        )
    )
    # Start away from the answer, below it (a policy that never acts stays at 3), but with
    # enough replicas to keep up: a backlog left by too few at the start would breach for
    # longer than a cold start, which the breach correction rightly adds to.
    result = simulate(trace, policy, config(initial_replicas=3, warmup_s=300))
    assert result.replicas[0] == 3
    assert result.replicas[-1] == expected
    assert result.max_replicas == expected
    assert result.slo_attainment == 1.0


class _AskFor:
    """Asks for `target` replicas, and for `then` from `until_s` on."""

    name = "ask-for"
    interval_s = 1.0

    def __init__(self, target: int, until_s: float = math.inf, then: int = 0) -> None:
        self.target, self.until_s, self.then = target, until_s, then

    def decide(self, signals: RegionSignals, state: PolicyState) -> tuple[ScalingDecision, PolicyState]:
        return ScalingDecision(self.then if signals.now_s >= self.until_s else self.target, "scripted"), state


def test_gpu_hours_count_starting_replicas() -> None:
    trace = constant_trace(rate=0.1, seconds=200)
    result = simulate(trace, _AskFor(5), config(initial_replicas=1))
    # One replica ready from 0 s; four started at 0 s, ready at 30 s, all paid to the end.
    end = result.times_s[-1] + 1.0
    assert result.gpu_hours == pytest.approx(5 * end / 3600, rel=1e-6)
    assert result.ready[10] == 1 and result.replicas[10] == 5
    assert result.ready[40] == 5


def test_a_drained_replicas_sequences_decode_at_the_unstretched_step() -> None:
    """A 20,000-token prompt takes 10.005 s to prefill, so the engine's recent time is all
    prefill when the request starts decoding: its 1,000 steps are stretched to 1 s each (the
    1 ms step over the 0.1% floor of time left, within the cap of one 4,000-token chunk).
    Stopped at 20 s, the replica takes no prefill any more: the 990.005 tokens left decode
    at the 1 ms step, so it is paid until 20.99 s, not the 1,010 s the stretched steps take."""
    trace = traces.from_arrays(np.array([0.0, 30.0]), np.array([20_000, 2]), np.array([1_001, 1]))
    result = simulate(trace, _AskFor(1, until_s=20.0), config(min_replicas=0, max_replicas=1))
    first_token = 20_000 / 2000 + 5 * 0.001
    left = first_token + 1_000 * 1.0 - 20.0
    assert result.gpu_hours == pytest.approx((20.0 + left * 0.001) / 3600, rel=1e-9)


def test_requests_are_held_while_no_replica_is_ready() -> None:
    trace = constant_trace(rate=0.5, seconds=120)
    result = simulate(trace, _AskFor(1), config(min_replicas=0, initial_replicas=0))
    # The first request waits out the 30 s cold start.
    assert result.ttft_p95_s > 25.0
    assert 0.0 < result.slo_attainment < 1.0


def test_superposition_multiplies_the_rate_over_the_same_span() -> None:
    trace = constant_trace(rate=1.0, seconds=100)
    scaled = traces.superpose(trace, 10)
    assert len(scaled) == 10 * len(trace)
    assert scaled.duration_s <= trace.duration_s + 1.0
    assert int(scaled.prompt_tokens.sum()) == 10 * int(trace.prompt_tokens.sum())


def test_loaders_read_both_formats(tmp_path: Path) -> None:
    azure = tmp_path / "a.csv"
    azure.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,100,5\n2023-11-16 18:17:05.4799600,200,7\n"
    )
    loaded = traces.load(azure, "azure")
    assert loaded.arrival_s.tolist() == pytest.approx([0.0, 1.5])
    assert loaded.prompt_tokens.tolist() == [100, 200]
    mooncake = tmp_path / "m.jsonl"
    mooncake.write_text(
        '{"timestamp": 0, "input_length": 10, "output_length": 3}\n'
        '{"timestamp": 2500, "input_length": 20, "output_length": 4}\n'
    )
    loaded = traces.load(mooncake, "mooncake")
    assert loaded.arrival_s.tolist() == [0.0, 2.5]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0}\n')
    with pytest.raises(traces.TraceError, match="bad.jsonl:1"):
        traces.load(bad, "mooncake")


@pytest.fixture(scope="module")
def azure_lineup() -> dict[str, DemandReplayResult]:
    """Every policy's best setting on the Azure code trace, as benchmarks/autoscale_sim.py runs it."""
    if not SHARED_TRACE.is_file():
        pytest.skip("shared data absent")
    from autoscaler.sim.cli import run
    from meridian_core.replica_model import H100_LLAMA31_8B

    trace = traces.load(SHARED_TRACE, "azure")
    results = run(
        trace,
        list(lineup.POLICIES),
        H100_LLAMA31_8B,
        AutoscalingSpec(min_replicas=1, max_replicas=512),
        SLOSpec(ttft_p95_ms=2000, itl_p95_ms=200),
        600.0,
        show_progress=False,
    )
    assert {r.policy for r in results} == set(lineup.POLICIES)
    return lineup.best_settings(results, 0.99)


def test_meridian_holds_todays_level_on_the_azure_code_trace(azure_lineup: dict[str, DemandReplayResult]) -> None:
    """Today's figures (benchmarks/results/autoscale.md): 96.2% attainment, 3.25 GPU-hours.
    The goal below is not met; this pins the level reached so that a regression fails.
    (Bursts sized by the 5-second bins' quantile held 8 replicas at peak and reached
    98.1% with 3.58; the fluid holds what the bursts seen so far need, and the trace's
    largest bursts come in its first counted minutes, bigger than any before them.)"""
    meridian = azure_lineup["meridian"]
    assert meridian.slo_attainment >= 0.96
    assert meridian.gpu_hours <= 3.3


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="goal not met: see benchmarks/results/autoscale.md (Meridian below 99% or not 30% cheaper)",
)
def test_goal_on_the_azure_code_trace(azure_lineup: dict[str, DemandReplayResult]) -> None:
    meridian = azure_lineup["meridian"]
    assert meridian.slo_attainment >= 0.99
    peers = [r for name, r in azure_lineup.items() if name != "meridian" and r.slo_attainment >= 0.99]
    assert peers
    assert meridian.gpu_hours <= 0.7 * min(r.gpu_hours for r in peers)


def poisson_trace(rate: float, seconds: float, prompt: int, output: int, seed: int) -> traces.Trace:
    """Poisson arrivals with lognormal prompt and output lengths of the given means."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, int(rate * seconds * 1.3)))
    arrivals = arrivals[arrivals < seconds]
    prompts = rng.lognormal(np.log(prompt) - 0.5, 1.0, len(arrivals)).astype(int).clip(1, 8000)
    outputs = rng.lognormal(np.log(output) - 0.5, 1.0, len(arrivals)).astype(int).clip(1, 2000)
    return traces.from_arrays(arrivals, prompts, outputs)


# A decode-heavier mix than the code trace (the shape of Azure's 2023 conversation
# service: ~1,150 prompt and ~210 output tokens), at a flat 60 requests/s on H100s.
DECODE_HEAVIER = {"rate": 60.0, "seconds": 3600.0, "prompt": 1155, "output": 211, "seed": 0}


def test_the_capacity_model_agrees_with_the_simulators_replica_on_a_decode_heavier_mix() -> None:
    """Prefill alone would fit in five replicas; decode steps take the rest of their time,
    and five cannot keep up. The model must see that, as the simulated replica does."""
    from meridian_core.replica_model import H100_LLAMA31_8B

    trace = poisson_trace(**DECODE_HEAVIER)
    workload = Workload(60.0, float(trace.prompt_tokens.mean()), float(trace.output_tokens.mean()))
    planned = replicas_needed(H100_LLAMA31_8B, workload, 2.0, 0.2, 0.99, 512)
    replay = {"profile": H100_LLAMA31_8B, "slo_ttft_s": 2.0, "slo_itl_s": 0.2, "warmup_s": 600.0}
    static = {
        n: simulate(trace, StaticPeak(StaticConfig(replicas=n)), DemandReplayConfig(initial_replicas=n, **replay))
        for n in (planned - 1, planned)
    }
    assert static[planned].slo_attainment >= 0.99
    assert static[planned - 1].slo_attainment < 0.99


@pytest.fixture(scope="module")
def flat_decode_heavier() -> tuple[DemandReplayResult, DemandReplayResult]:
    """Meridian's policy from one replica, and static provisioning at the model's count,
    on the flat decode-heavier load."""
    from meridian_core.replica_model import H100_LLAMA31_8B

    trace = poisson_trace(**DECODE_HEAVIER)
    replay = {"profile": H100_LLAMA31_8B, "slo_ttft_s": 2.0, "slo_itl_s": 0.2, "warmup_s": 600.0}
    policy = SloPolicy(
        SloPolicyConfig(
            autoscaling=AutoscalingSpec(min_replicas=1, max_replicas=512),
            slo=SLOSpec(ttft_p95_ms=2000, itl_p95_ms=200),
            profile=H100_LLAMA31_8B,
        )
    )
    workload = Workload(60.0, float(trace.prompt_tokens.mean()), float(trace.output_tokens.mean()))
    planned = replicas_needed(H100_LLAMA31_8B, workload, 2.0, 0.2, 0.99, 512)
    static = simulate(
        trace, StaticPeak(StaticConfig(replicas=planned)), DemandReplayConfig(initial_replicas=planned, **replay)
    )
    return simulate(trace, policy, DemandReplayConfig(**replay)), static


def test_meridian_holds_todays_level_on_a_flat_decode_heavier_load(flat_decode_heavier) -> None:
    """Today's figures: 100% attainment and 5.22 GPU-hours against static's 5.0 (before
    the backlog counted decode and the correction's steps grew in a row: 99.0%, 6.43;
    before the fixed-point capacity model and the held correction: 68.7%, 9.93).
    This pins the level reached so that a regression fails."""
    meridian, static = flat_decode_heavier
    assert meridian.slo_attainment >= 0.99
    assert meridian.gpu_hours <= 1.1 * static.gpu_hours


def test_a_flat_load_settles_on_a_steady_replica_count_without_a_limit_cycle(flat_decode_heavier) -> None:
    meridian, _ = flat_decode_heavier
    times, replicas = np.array(meridian.times_s), np.array(meridian.replicas)
    settled = replicas[times > 1800]  # the second half hour, long after the start from one replica
    assert settled.min() == settled.max(), f"replicas swing between {settled.min()} and {settled.max()}"
