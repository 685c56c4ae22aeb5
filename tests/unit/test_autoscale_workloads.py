"""The autoscaling evaluation suite's transforms: known answers on small synthetic traces.
The data-driven checks skip when ../shared/data is absent."""

from __future__ import annotations

import numpy as np
import pytest

from autoscaler.sim import traces, workloads
from meridian_core.shared_data import AZURE_CODE_TRACE, MOONCAKE_TRACE


def even(rate: float, seconds: float, prompt: int = 100, output: int = 10) -> traces.Trace:
    arrivals = np.arange(0.0, seconds, 1.0 / rate)
    return traces.from_arrays(arrivals, np.full(len(arrivals), prompt), np.full(len(arrivals), output))


def ramp_tokens(n: int) -> traces.Trace:
    """n requests a second apart whose token counts identify them (prompt i+1, output 2i+1)."""
    i = np.arange(n)
    return traces.from_arrays(i.astype(float), i + 1, 2 * i + 1)


def test_superposing_k_copies_multiplies_count_and_token_sums_by_k_over_the_same_span() -> None:
    trace = ramp_tokens(50)
    for k in (1, 3, 10):
        scaled = traces.superpose(trace, k)
        assert len(scaled) == k * len(trace)
        assert int(scaled.prompt_tokens.sum()) == k * int(trace.prompt_tokens.sum())
        assert int(scaled.output_tokens.sum()) == k * int(trace.output_tokens.sum())
        assert scaled.duration_s <= trace.duration_s + 1.0
        assert np.all(np.diff(scaled.arrival_s) >= 0)


def test_merge_keeps_every_request_in_time_order() -> None:
    a, b = even(1.0, 10, prompt=5), traces.Trace(np.array([0.5, 3.5]), np.array([7, 7]), np.array([1, 1]))
    merged = workloads.merge(a, b)
    assert len(merged) == 12
    assert np.all(np.diff(merged.arrival_s) >= 0)
    assert merged.prompt_tokens.tolist()[:3] == [5, 7, 5]


def test_window_keeps_the_half_open_interval() -> None:
    cut = workloads.window(even(1.0, 10), 2.0, 5.0)
    assert cut.arrival_s.tolist() == [2.0, 3.0, 4.0]


def test_a_flat_time_warp_rescales_the_span_and_keeps_order_count_and_tokens() -> None:
    trace = ramp_tokens(101)  # arrivals 0..100 s
    warped = workloads.time_warp(trace, lambda x: np.ones_like(x), span_s=200.0)
    assert len(warped) == len(trace)
    assert warped.arrival_s == pytest.approx(2.0 * trace.arrival_s)
    assert warped.prompt_tokens.tolist() == trace.prompt_tokens.tolist()
    assert warped.output_tokens.tolist() == trace.output_tokens.tolist()


def test_a_linear_warp_maps_the_span_by_the_inverse_cumulative_of_its_shape() -> None:
    # Rate shape 2x on [0, 1]: F(x) = x², so arrival t of a 100 s trace lands at sqrt(t / 100) * span.
    trace = even(1.0, 101)
    warped = workloads.time_warp(trace, lambda x: 2.0 * x, span_s=50.0)
    expected = np.sqrt(trace.arrival_s / trace.duration_s) * 50.0
    assert warped.arrival_s == pytest.approx(expected, abs=0.05)
    assert warped.arrival_s[0] == 0.0 and warped.arrival_s[-1] == pytest.approx(50.0)
    assert np.all(np.diff(warped.arrival_s) >= 0)
    # The rate grows with the shape: the second half of the span holds 3/4 of the requests.
    assert np.mean(warped.arrival_s >= 25.0) == pytest.approx(0.75, abs=0.01)


def test_a_warp_rejects_a_shape_with_no_rate() -> None:
    with pytest.raises(ValueError):
        workloads.time_warp(even(1.0, 10), lambda x: np.zeros_like(x))


def test_a_trough_warp_moves_requests_out_of_the_trough_in_proportion_to_its_depth() -> None:
    trace = even(10.0, 3600)
    shape = workloads.trough(0.05, 1 / 3, 2 / 3, edge=1e-3)
    warped = workloads.time_warp(trace, shape, span_s=3600.0)
    inside = np.mean((warped.arrival_s >= 1200) & (warped.arrival_s < 2400))
    # Mass inside = 0.05/3 of a total (2/3 + 0.05/3).
    assert inside == pytest.approx((0.05 / 3) / (2 / 3 + 0.05 / 3), abs=0.002)
    assert len(warped) == len(trace)


def test_a_diurnal_shape_starts_at_its_trough_and_peaks_mid_span() -> None:
    shape = workloads.diurnal(0.25, 1.75)
    values = shape(np.array([0.0, 0.25, 0.5, 1.0]))
    assert values == pytest.approx([0.25, 1.0, 1.75, 0.25])


def test_a_step_surge_has_the_peak_rate_inside_the_window_and_the_base_rate_outside() -> None:
    trace = even(1.0, 600)
    surged = workloads.step_surge(trace, base=2, peak=6, start_s=200.0, end_s=400.0)
    inside = (surged.arrival_s >= 200.0) & (surged.arrival_s < 400.0)
    assert int(inside.sum()) == 6 * 200
    assert int((~inside).sum()) == 2 * 400
    assert np.all(np.diff(surged.arrival_s) >= 0)
    with pytest.raises(ValueError):
        workloads.step_surge(trace, base=3, peak=2, start_s=0.0, end_s=1.0)


def test_tiling_plays_the_trace_end_to_end() -> None:
    trace = even(1.0, 10)
    tiled = workloads.tile(trace, 3)
    assert len(tiled) == 30
    assert tiled.arrival_s[10] == pytest.approx(10.0)
    assert tiled.duration_s == pytest.approx(29.0)


def test_poisson_is_seeded_and_has_the_asked_rate_and_means() -> None:
    a = workloads.poisson(20.0, 600.0, 256, 1024, seed=3)
    b = workloads.poisson(20.0, 600.0, 256, 1024, seed=3)
    assert a.arrival_s.tolist() == b.arrival_s.tolist()
    assert len(a) / 600.0 == pytest.approx(20.0, rel=0.05)
    assert a.prompt_tokens.mean() == pytest.approx(256, rel=0.1)
    # Outputs are clipped at 4,000, which trims the lognormal's mean a little.
    assert 850 < a.output_tokens.mean() < 1050


def test_every_workload_is_named_and_documented_in_one_line() -> None:
    assert len(set(workloads.NAMES)) == len(workloads.SUITE)
    for spec in workloads.SUITE:
        assert "\n" not in spec.how and spec.how
    for name in ("azure-code-1x", "azure-code-10x", "azure-code-100x", "mooncake-1x", "mooncake-10x"):
        assert name in workloads.NAMES
    with pytest.raises(ValueError):
        workloads.build("no-such-workload")


def test_the_synthetic_workloads_build_without_shared_data_and_deterministically() -> None:
    for name in ("decode-heavy", "decode-mixed"):
        first, second = workloads.build(name), workloads.build(name)
        assert len(first) > 10_000
        assert first.arrival_s.tolist() == second.arrival_s.tolist()
        assert first.output_tokens.sum() == second.output_tokens.sum()
    heavy = workloads.build("decode-heavy")
    assert heavy.output_tokens.mean() > 3 * heavy.prompt_tokens.mean()


@pytest.mark.skipif(not (AZURE_CODE_TRACE.is_file() and MOONCAKE_TRACE.is_file()), reason="shared data absent")
def test_the_trace_derived_workloads_keep_their_sources_tokens() -> None:
    azure = traces.load(AZURE_CODE_TRACE, "azure")
    assert len(workloads.build("azure-code-10x")) == 10 * len(azure)
    trough = workloads.build("trough")
    assert len(trough) == 30 * len(azure)
    assert int(trough.prompt_tokens.sum()) == 30 * int(azure.prompt_tokens.sum())
    inside = np.mean((trough.arrival_s >= 20 * 60) & (trough.arrival_s < 40 * 60))
    # 5% over minutes 20-40 less its two 1.2-min linear edges (inside the window), against 1 outside.
    in_mass = 0.05 * (1 / 3 - 2 * 0.02) + 2 * 0.02 * 1.05 / 2
    assert inside == pytest.approx(in_mass / (2 / 3 + in_mass), abs=0.003)
    ramp = workloads.build("diurnal-ramp")
    assert len(ramp) == 2 * workloads.DERIVED_BASE * len(azure)
    assert ramp.duration_s == pytest.approx(2 * workloads.HOUR_S)
    surge = workloads.build("step-surge")
    assert len(surge) > workloads.DERIVED_BASE * len(azure)


def test_the_replay_records_attainment_over_time_for_the_plots() -> None:
    from autoscaler.sim.demand_replay import DemandReplayConfig, simulate
    from autoscaler.sim.peer_autoscalers import StaticConfig, StaticPeak
    from autoscaler.sim.plot import windowed_attainment
    from meridian_core.replica_model import H100_LLAMA31_8B

    # 1 req/s of 1,000-token prompts: one replica serves every request within a 2 s TTFT.
    trace = even(1.0, 300, prompt=1000, output=10)
    config = DemandReplayConfig(profile=H100_LLAMA31_8B, slo_ttft_s=2.0, slo_itl_s=0.2, warmup_s=0.0)
    result = simulate(trace, StaticPeak(StaticConfig(replicas=1)), config)
    assert result.arrivals is not None and result.met is not None
    assert int(result.arrivals.sum()) == len(trace)
    assert float(result.met.sum()) == len(trace)
    starts, share = windowed_attainment(result, 60)
    assert starts.tolist() == [0.0, 60.0, 120.0, 180.0, 240.0]
    assert share.tolist() == [1.0] * 5
