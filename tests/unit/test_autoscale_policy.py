"""Meridian's scaling policy on synthetic signals."""

from __future__ import annotations

import dataclasses
import math

import pytest

from autoscaler.policy.signals import DemandSample, RegionSignals
from autoscaler.policy.slo_capacity import Workload, replicas_needed
from autoscaler.policy.slo_policy import SloPolicy, SloPolicyConfig
from meridian_core.replica_model import H100_LLAMA31_8B
from meridian_core.spec import AutoscalingSpec, SLOSpec

PROMPT = 2048
OUTPUT = 32
COLD_START = 90.0


def demand(rates: list[float]) -> tuple[DemandSample, ...]:
    """One 1-second sample per rate, ending at len(rates)."""
    return tuple(
        DemandSample(float(i), 1.0, round(r), round(r) * PROMPT, round(r) * OUTPUT, round(r))
        for i, r in enumerate(rates)
    )


def signals(
    rates: list[float], ready: int, waiting: int = 0, ttft_ms: float | None = None, running: int = 0
) -> RegionSignals:
    return RegionSignals(
        now_s=float(len(rates)),
        demand=demand(rates),
        ready=ready,
        starting=0,
        stopping=0,
        running=running,
        waiting=waiting,
        kv_usage=0.1,
        ttft_ms=ttft_ms,
        itl_ms=None,
        cold_start_s=COLD_START,
    )


def needed(rate: float) -> int:
    return replicas_needed(H100_LLAMA31_8B, Workload(rate, PROMPT, OUTPUT), 2.0, 0.2, 0.99, 512)


def policy(**settings: object) -> SloPolicy:
    """The policy with a region's autoscaling settings (bounds [1, 512] unless given) and
    its own tuning knobs, both named as keywords; the SLO is the spec's default."""
    scaling = {"min_replicas": 1, "max_replicas": 512}
    scaling.update({k: v for k, v in settings.items() if k in AutoscalingSpec.model_fields})
    knobs = {k: v for k, v in settings.items() if k not in AutoscalingSpec.model_fields}
    return SloPolicy(
        SloPolicyConfig(autoscaling=AutoscalingSpec(**scaling), slo=SLOSpec(), profile=H100_LLAMA31_8B, **knobs)
    )


def test_config_carries_the_specs_own_sections() -> None:
    scaling = AutoscalingSpec(min_replicas=0, max_replicas=8, idle_to_zero_s=120, cold_start_s=60)
    slo = SLOSpec(ttft_p95_ms=1500, itl_p95_ms=100)
    config = SloPolicyConfig(autoscaling=scaling, slo=slo, profile=H100_LLAMA31_8B)
    assert config.autoscaling is scaling and config.slo is slo
    # A setting of the spec is not declared again beside it.
    assert not set(SloPolicyConfig.model_fields) & (set(AutoscalingSpec.model_fields) | set(SLOSpec.model_fields))
    with pytest.raises(ValueError, match="max_replicas"):
        SloPolicyConfig(autoscaling=scaling, slo=slo, profile=H100_LLAMA31_8B, max_replicas=8)


def test_the_slo_of_the_spec_is_the_target() -> None:
    """The same demand under a 2 s and a 0.5 s TTFT target: the tighter needs more replicas."""
    rates = [20.0] * 300
    loose = SloPolicyConfig(
        autoscaling=AutoscalingSpec(max_replicas=512), slo=SLOSpec(ttft_p95_ms=2000), profile=H100_LLAMA31_8B
    )
    tight = loose.model_copy(update={"slo": SLOSpec(ttft_p95_ms=500)})
    relaxed, _ = SloPolicy(loose).decide(signals(rates, 1), {})
    strict, _ = SloPolicy(tight).decide(signals(rates, 1), {})
    assert relaxed.target == needed(20.0)
    assert strict.target > relaxed.target


def test_bad_knob_names_the_field() -> None:
    with pytest.raises(ValueError, match="attainment"):
        SloPolicyConfig(autoscaling=AutoscalingSpec(), slo=SLOSpec(), profile=H100_LLAMA31_8B, attainment=1.5)


def test_scales_up_ahead_of_rising_token_demand_before_any_breach() -> None:
    # 1 → 40 req/s over 10 minutes; the policy sees no SLO breach (ttft None).
    rates = [1 + 39 * i / 600 for i in range(600)]
    now_rate = rates[-1]
    ready = needed(now_rate)
    decision, _ = policy(burst_window_s=10).decide(signals(rates, ready), {})
    # Enough for the rate a cold start ahead, more than today's rate needs.
    assert decision.target > ready
    assert decision.target >= needed(now_rate + 39 / 600 * COLD_START) - 1
    assert "trend" in decision.reason


def test_capacity_counts_tokens_not_requests() -> None:
    small = replicas_needed(H100_LLAMA31_8B, Workload(20, 200, 20), 2.0, 0.2, 0.99, 512)
    large = replicas_needed(H100_LLAMA31_8B, Workload(20, 4000, 20), 2.0, 0.2, 0.99, 512)
    assert large > 2 * small


def test_holds_during_hysteresis_then_scales_down_after_sustained_low_demand() -> None:
    p = policy(burst_window_s=30, long_window_s=30, trend_window_s=30)
    high = [40.0] * 300
    decision, state = p.decide(signals(high, needed(40)), {})
    peak = decision.target
    assert peak == needed(40)
    rates = list(high)
    held = []
    for step in range(1, 41):  # 200 s of low demand, a decision every 5 s
        rates += [2.0] * 5
        decision, state = p.decide(signals(rates, peak), state)
        held.append((step * 5, decision.target))
    # Within one cold start (plus the 30 s windows draining) the target holds.
    assert all(target == peak for t, target in held if t <= COLD_START)
    # After sustained low demand it drops to what the low rate needs.
    assert held[-1][1] == max(needed(2.0), 1) < peak


def test_a_fresh_policy_holds_a_running_fleet_for_a_scale_down_window_before_it_has_demand() -> None:
    # A restarted controller: 20 replicas serve, and the policy has no state and no history yet.
    p = policy()
    decision, state = p.decide(signals([0.0] * 5, 20), {})
    assert decision.target == 20
    rates = [0.0] * 5
    for _ in range(int(COLD_START // 5) - 2):
        rates += [0.0] * 5
        decision, state = p.decide(signals(rates, 20), state)
        assert decision.target == 20
    rates += [0.0] * int(COLD_START)
    decision, _ = p.decide(signals(rates, 20), state)
    assert decision.target == 1  # past the window, the empty demand is believed


def test_scales_to_zero_only_after_idle_time() -> None:
    p = policy(min_replicas=0, idle_to_zero_s=120, burst_window_s=30)
    rates = [5.0] * 60
    decision, state = p.decide(signals(rates, 1), {})
    assert decision.target >= 1
    for _ in range(23):  # 115 s idle
        rates += [0.0] * 5
        decision, state = p.decide(signals(rates, 1), state)
        assert decision.target >= 1
    rates += [0.0] * 5  # 120 s idle
    # Not while a request still runs: one whose arrival the replica has not reported yet,
    # or a generation longer than the idle time.
    running, _ = p.decide(signals(rates + [0.0] * 600, 1, running=1), state)
    assert running.target == 1 and "1 request(s) in the region" in running.reason
    decision, state = p.decide(signals(rates, 1), state)
    assert decision.target == 0
    assert "idle" in decision.reason
    # A request held by the router brings a replica back at once.
    rates += [1.0]
    decision, _ = p.decide(signals(rates, 0, waiting=1), state)
    assert decision.target >= 1


def test_never_idles_to_zero_when_min_is_positive() -> None:
    decision, _ = policy(min_replicas=2, idle_to_zero_s=10).decide(signals([0.0] * 600, 2), {})
    assert decision.target == 2


def test_forecast_scales_ahead_of_a_periodic_burst() -> None:
    # 60 s bursts of 40 req/s every 600 s over a 2 req/s base, 4 periods of history;
    # the next burst starts 60 s from now, inside one cold start.
    period, burst = 600, 60
    rates = [40.0 if (i % period) >= period - burst else 2.0 for i in range(4 * period - burst - 60)]
    seasonal = policy(burst_window_s=30, long_window_s=30, trend_window_s=30)
    blind = policy(burst_window_s=30, long_window_s=30, trend_window_s=30, season_min_corr=1.0)
    ahead, _ = seasonal.decide(signals(rates, needed(2.0)), {})
    late, _ = blind.decide(signals(rates, needed(2.0)), {})
    assert late.target == needed(2.0)
    assert ahead.target >= needed(40.0)
    assert "period 600 s" in ahead.reason


def test_only_a_breach_longer_than_a_cold_start_adds_replicas_beyond_the_model() -> None:
    p = policy(burst_window_s=30)
    rates = [10.0] * 300
    calm, state = p.decide(signals(rates, needed(10)), {})
    targets = []
    for _ in range(20):  # 100 s of observed p95 TTFT at 5 s
        rates += [10.0] * 5
        decision, state = p.decide(signals(rates, calm.target, ttft_ms=5000.0), state)
        targets.append(decision)
    # A burst-length breach (< 90 s) changes nothing: new replicas would come too late.
    assert all(d.target == calm.target for d in targets[:17])
    assert targets[-1].target > calm.target
    assert "breach" in targets[-1].reason


@pytest.mark.parametrize(("rate", "expected"), [(0.0, 2), (1000.0, 6)])
def test_respects_min_and_max(rate: float, expected: int) -> None:
    decision, _ = policy(min_replicas=2, max_replicas=6).decide(signals([rate] * 300, 1), {})
    assert decision.target == expected


def test_state_is_json_able() -> None:
    import json

    _, state = policy().decide(signals([3.0] * 100, 1), {})
    assert json.loads(json.dumps(state)) == state
    assert math.isclose(state["prompt_mean"], PROMPT)


def test_bursts_shorter_than_a_cold_start_are_sized_as_a_fluid() -> None:
    """Two demands with the same mean rate, 2 req/s: one smooth, one arriving as 60
    requests within one second every 30 s. Every window, trend and period the forecast
    reads sees the same rate; only burst sizing tells them apart."""
    seconds = 600
    smooth = [2.0] * seconds
    bursty = [60.0 if i % 30 == 0 else 0.0 for i in range(1, seconds + 1)]
    assert sum(smooth) == sum(bursty)
    knobs = {"season_min_corr": 1.0, "trend_window_s": 10.0}
    calm, _ = policy(**knobs).decide(signals(smooth, 1), {})
    burst, _ = policy(**knobs).decide(signals(bursty, 1), {})
    assert calm.target == needed(2.0)
    assert "burst" in burst.reason and "burst" not in calm.reason
    # Each burst's backlog grows through its second at 60 prompts/s minus the fleet's
    # prefill rate C; a request waits backlog / C. The share of a burst whose wait stays
    # within the TTFT target less its own prefill, b, is C·b / (60·P − C): 99% of it
    # needs C ≥ 0.99 · 60·P / (b + 0.99).
    service_s = H100_LLAMA31_8B.prefill_s(PROMPT, 1.0)
    budget_s = 2.0 - service_s
    fleet_tokens_per_s = 0.99 * 60 * PROMPT / (budget_s + 0.99)
    assert burst.target == math.ceil(fleet_tokens_per_s / (PROMPT / service_s))
    assert burst.target > calm.target


def test_a_burst_recorded_at_a_lower_level_is_grown_to_the_level_ahead() -> None:
    """The same 60-request burst every 30 s, on a base rate doubling every 10 minutes:
    replayed as recorded, the early (smaller-base) bursts would set the count; grown to
    the level ahead, the policy holds more than for the same bursts on a flat base."""
    seconds = 1800

    def demand_with_base(base_at: object) -> list[float]:
        return [(60.0 if i % 30 == 0 else 0.0) + base_at(i) for i in range(1, seconds + 1)]

    flat = demand_with_base(lambda i: 8.0)
    rising = demand_with_base(lambda i: 8.0 * 2 ** ((i - seconds) / 600))
    knobs = {"season_min_corr": 1.0, "trend_window_s": 10.0, "recent_burst_window_s": 10.0, "burst_window_s": 1800}
    held_flat, _ = policy(**knobs).decide(signals(flat, 1), {})
    held_rising, _ = policy(**knobs).decide(signals(rising, 1), {})
    blind, _ = policy(**knobs, growth_max=1.0).decide(signals(rising, 1), {})
    # Both end at the same level (8 req/s now); grown, the rising base's bursts come back
    # at the level a cold start ahead, above it.
    assert held_rising.target > held_flat.target >= blind.target
    assert "burst" in held_rising.reason


def test_a_climb_that_has_levelled_off_is_no_growth() -> None:
    """The same bursts on a base that stepped from 1 to 8 req/s 13 minutes ago and has
    been flat since: fitted over the half hour the climb is steep, but the level is no
    longer rising, so the bursts are replayed as recorded, as on a flat base."""
    seconds = 1800
    knobs = {"season_min_corr": 1.0, "trend_window_s": 10.0, "recent_burst_window_s": 10.0, "burst_window_s": 1800}
    flat = [(60.0 if i % 30 == 0 else 0.0) + 8.0 for i in range(1, seconds + 1)]
    climbed = [(60.0 if i % 30 == 0 else 0.0) + (1.0 if i < 1000 else 8.0) for i in range(1, seconds + 1)]
    held_flat, _ = policy(**knobs).decide(signals(flat, 1), {})
    held_climbed, _ = policy(**knobs).decide(signals(climbed, 1), {})
    whole_half_hour, _ = policy(**knobs, growth_recent_s=seconds).decide(signals(climbed, 1), {})
    assert held_climbed.target == held_flat.target
    assert whole_half_hour.target > held_flat.target


def test_steps_in_a_row_square_the_correction_step() -> None:
    """A breach that outlasts a cold start, again and again with every planned replica
    ready: each step waits a cold start, and each squares the one before (1.1, 1.21,
    1.4641), so a near miss costs one small step and a model far off is caught in three."""
    p = policy(burst_window_s=30)
    config = p.config
    rates = [10.0] * 300
    decision, state = p.decide(signals(rates, needed(10)), {})
    corrections = []
    for _ in range(100):  # 500 s of breach; the fleet is always what was asked
        rates += [10.0] * 5
        decision, state = p.decide(signals(rates, decision.target, ttft_ms=5000.0), state)
        corrections.append(state["correction"])
    steps = sorted(set(corrections))
    assert steps[:4] == pytest.approx([1.0, 1.1, 1.1 * 1.21, 1.1 * 1.21 * 1.4641])
    assert config.correction_step == 1.1
    assert corrections[-1] == pytest.approx(config.correction_max)


def test_when_service_time_alone_misses_the_ttft_target_it_stops_where_the_wait_reaches_zero() -> None:
    """12,000-token prompts at 2 req/s: one prefill takes 12000/20000 s + 2 chunks × 6.5 ms
    ≈ 0.613 s, so the 99th percentile of service alone is 0.613 · ln 100 ≈ 2.82 s > 2 s and
    no count meets the SLO. Offered load a = 2 × 0.613 ≈ 1.23; Erlang C (probability of
    waiting) is 0.039 at 4 replicas, 0.0088 ≤ 1% at 5: from 5 on the wait quantile is zero
    and more replicas change nothing. The answer is 5, not the 512 limit."""
    service_s = 12000 / 20000 + 2 * 0.0065
    assert service_s * math.log(100) > 2.0

    def waits(n: int, a: float) -> float:  # Erlang C from its closed form
        top = a**n / math.factorial(n) * n / (n - a)
        return top / (sum(a**k / math.factorial(k) for k in range(n)) + top)

    offered = 2.0 * service_s
    assert waits(4, offered) > 0.01 >= waits(5, offered)
    assert replicas_needed(H100_LLAMA31_8B, Workload(2.0, 12000, 300), 2.0, 0.2, 0.99, 512) == 5
    # A looser target that the service time does meet is sized by the quantile as before:
    # at 5 replicas the TTFT quantile is 2.81 s (wait 0), at 4 it is 3.11 s.
    assert replicas_needed(H100_LLAMA31_8B, Workload(2.0, 12000, 300), 3.0, 0.2, 0.99, 512) == 5
    assert replicas_needed(H100_LLAMA31_8B, Workload(2.0, 12000, 300), 3.2, 0.2, 0.99, 512) == 4


def test_a_backlog_the_ready_replicas_cannot_clear_within_a_cold_start_gets_replicas_of_its_own() -> None:
    rates = [10.0] * 300
    calm, settled = policy().decide(signals(rates, needed(10)), {})
    assert calm.target == needed(10)
    service_s = H100_LLAMA31_8B.prefill_s(PROMPT, 1.0)
    horizon = COLD_START + 5.0  # a cold start and a decision interval
    # A queue the ready replicas prefill within the TTFT target is the plan's headroom.
    within = math.floor(calm.target * (2.0 - service_s) / service_s)
    decision, _ = policy().decide(signals(rates, calm.target, waiting=within), {})
    assert decision.target == calm.target
    # Beyond it, with the ready replicas all the steady demand's: a queue worth 3
    # replicas' prefill time over the horizon gets those 3.
    backlog = math.floor(3 * horizon / service_s)
    decision, _ = policy().decide(signals(rates, calm.target, waiting=backlog), {})
    assert decision.target == calm.target + 3
    # Two ready replicas beyond the steady demand's take two of them.
    decision, _ = policy().decide(signals(rates, calm.target + 2, waiting=backlog), settled)
    assert decision.target == calm.target + 1


def test_arrivals_whose_tokens_the_engine_has_not_counted_yet_do_not_shrink_the_mean_prompt() -> None:
    """A live engine counts a prompt's tokens at its first token. A region back from an
    outage: 30 min at 30 req/s, 200 s down, then 5 s of arrivals none of which has reached
    its first token. Dividing tokens by arrivals gave a mean prompt of 0 tokens, and the
    burst replay sized the earlier 30 min at that prompt's per-request overhead: 406 replicas."""
    history = [DemandSample(float(i), 1.0, 30, 30 * PROMPT, 30 * OUTPUT, 30) for i in range(1800)]
    history += [DemandSample(float(i), 1.0, 0, 0, 0, 0) for i in range(1800, 2000)]

    def back(prompt: int, output: int, prefilled: int) -> RegionSignals:
        arriving = [DemandSample(float(i), 1.0, 30, prompt, output, prefilled) for i in range(2000, 2005)]
        return dataclasses.replace(signals([], 1), now_s=2005.0, demand=tuple(history + arriving))

    counted_on_arrival, _ = policy().decide(back(30 * PROMPT, 30 * OUTPUT, 30), {})
    not_counted_yet, _ = policy().decide(back(0, 0, 0), {})
    assert counted_on_arrival.target == not_counted_yet.target == needed(30)
    assert f"× {PROMPT}+{OUTPUT} tok" in not_counted_yet.reason
