"""Replica reports → RegionSignals: cumulative counters differenced per replica."""

import pytest

from autoscaler.live.replica_reports import ColdStartClock, ReplicaCounts, ReplicaReportTracker
from meridian_core.contracts import ReplicaReport

COUNTS = ReplicaCounts(ready=2, starting=0, stopping=0)


def report(arrived: float, prompt: float = 0.0, first_tokens: float = 0.0, **extra: float) -> ReplicaReport:
    return ReplicaReport(
        arrived_total=arrived,
        prompt_tokens_total=prompt,
        output_tokens_total=0.0,
        first_tokens_total=first_tokens,
        **extra,
    )


def test_demand_is_the_sum_of_per_replica_increases():
    tracker = ReplicaReportTracker(history_s=60)
    first = tracker.signals(100.0, {"a": report(10.0, 1000.0, 9.0), "b": report(4.0, 400.0, 4.0)}, COUNTS, 90.0)
    assert first.demand == ()  # nothing to difference against yet
    second = tracker.signals(105.0, {"a": report(13, 1300, 11), "b": report(5, 500, 5)}, COUNTS, 90.0)
    (sample,) = second.demand
    assert (sample.start_s, sample.duration_s, sample.requests, sample.prompt_tokens, sample.prefilled) == (
        100.0,
        5.0,
        4,
        400,
        3,
    )


def test_a_new_replica_counts_from_zero_and_a_restarted_one_afresh():
    tracker = ReplicaReportTracker(history_s=60)
    tracker.signals(0.0, {"a": report(10)}, COUNTS, 90.0)
    signals = tracker.signals(5.0, {"a": report(2), "c": report(3)}, COUNTS, 90.0)  # a restarted, c new
    assert signals.demand[-1].requests == 5


def test_history_is_bounded_and_load_is_summed():
    tracker = ReplicaReportTracker(history_s=10)
    for t in range(0, 60, 5):
        signals = tracker.signals(
            float(t),
            {
                "a": report(t, running=3.0, waiting=1.0, kv_cache_usage=0.2, ttft_p95_s=0.4, itl_p95_s=-1.0),
                "b": report(t, running=2.0, waiting=0.0, kv_cache_usage=0.4, ttft_p95_s=0.9, itl_p95_s=-1.0),
            },
            COUNTS,
            90.0,
        )
    assert all(sample.start_s >= 45.0 for sample in signals.demand)
    assert (signals.running, signals.waiting) == (5, 1)
    assert signals.kv_usage == pytest.approx(0.3)
    assert signals.ttft_ms == pytest.approx(900.0)  # the slowest replica
    assert signals.itl_ms is None  # nothing observed


def test_cold_start_is_measured_from_wanting_a_replica_to_having_it():
    clock = ColdStartClock(configured_s=90.0)
    clock.observe(0.0, ready=1, target=1)
    clock.observe(10.0, ready=1, target=2)
    clock.observe(20.0, ready=1, target=2)
    assert (clock.last_s, clock.measured) == (90.0, False)
    clock.observe(52.5, ready=2, target=2)
    assert (clock.last_s, clock.measured) == (42.5, True)
