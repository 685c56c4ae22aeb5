"""The autoscaling report's measured statements about a workload (benchmarks/autoscale_sim.py)."""

from __future__ import annotations

import numpy as np
import pytest

from autoscaler.sim import traces
from benchmarks.autoscale_sim import WARMUP_S, Verdict, record_windows, verdict_lines
from meridian_core.replica_model import H100_LLAMA31_8B


def test_record_windows_count_the_counted_requests_in_loads_never_seen_before() -> None:
    """One request a second all along, and two extra in one counted second: that window
    is busier than any before it, by 3x, and holds 3 of the counted requests."""
    seconds = 1200
    arrivals = np.concatenate((np.arange(float(seconds)), [900.25, 900.75]))
    trace = traces.from_arrays(arrivals, np.full(len(arrivals), 1000), np.full(len(arrivals), 10))
    share, jump = record_windows(trace, H100_LLAMA31_8B, 1.0)
    counted = int((trace.arrival_s >= WARMUP_S).sum())
    assert share == pytest.approx(3 / counted)
    assert jump == pytest.approx(3.0)


def test_a_steady_trace_has_no_record_windows_after_the_warm_up() -> None:
    arrivals = np.arange(1200.0)
    trace = traces.from_arrays(arrivals, np.full(len(arrivals), 1000), np.full(len(arrivals), 10))
    assert record_windows(trace, H100_LLAMA31_8B, 1.0) == (0.0, 1.0)


def verdict(**overrides: object) -> Verdict:
    values: dict[str, object] = {
        "workload": "flat",
        "meridian_attainment": 1.0,
        "meridian_gpu_hours": 2.5,
        "meridian_max_replicas": 3,
        "peer": "knative-kpa concurrency=100",
        "peer_gpu_hours": 3.2,
        "static": "replicas=3",
        "static_gpu_hours": 2.5,
        "cheaper_static_attainment": 0.0,
        "attainment_ceiling": 1.0,
        "work_bound_gpu_hours": 1.5,
    }
    values.update(overrides)
    return Verdict.model_validate(values)


def test_a_cost_goal_below_static_in_hindsight_is_named_with_what_cheaper_counts_reach() -> None:
    lines = verdict_lines(verdict())
    (named,) = [line for line in lines if "30% below that peer" in line]
    assert "2.24 GPU-hours" in named
    assert "replicas=3, 2.50" in named
    assert "at most 0.00%" in named


def test_a_met_cost_goal_names_no_bound() -> None:
    lines = verdict_lines(verdict(meridian_gpu_hours=2.0, static_gpu_hours=2.4))
    assert not [line for line in lines if "30% below that peer" in line]
