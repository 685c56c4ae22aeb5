"""The burst fluid (`slo_capacity.fluid_replicas_needed`) on histories with known answers."""

from __future__ import annotations

import numpy as np

from autoscaler.policy.slo_capacity import fluid_replicas_needed

REPLICA_TOKENS_PER_S = 1000.0


def fewest(durations: list[float], requests: list[float], tokens: list[float], wait_s: float, attainment: float) -> int:
    return fluid_replicas_needed(
        np.array(durations), np.array(requests), np.array(tokens), REPLICA_TOKENS_PER_S, wait_s, attainment, 64
    )


def test_a_steady_load_needs_the_replicas_its_rate_fills() -> None:
    """Ten minutes at exactly 3 replicas' prefill rate: 3 never queue; with 2 the backlog
    grows by a replica's rate every second, so only the first few seconds stay within
    the wait."""
    seconds = 600
    assert fewest([1.0] * seconds, [10.0] * seconds, [3000.0] * seconds, 1.9, 0.99) == 3


def test_a_backlog_carried_into_the_next_interval_delays_its_requests() -> None:
    """One request carrying 10,000 prompt tokens, then 100 small requests in the next
    second. A fleet of C tokens/s leaves 10,000 − C queued; the small requests wait until
    it is within C · 1 s, so 99% of the 101 requests need C ≥ 5,000: 5 replicas. A fluid
    that forgot the backlog between intervals would answer 1."""
    assert fewest([1.0, 1.0], [1.0, 100.0], [10_000.0, 0.0], 1.0, 0.99) == 5


def test_a_burst_is_met_by_the_share_of_it_that_waits_within_the_target() -> None:
    """60 requests of 1,000 tokens within one second: a backlog growing at 60,000 − C
    tokens/s, of which a request waits backlog / C. The share within 1 s of wait is
    C / (60,000 − C); 50% of the burst needs C ≥ 20,000 (20 replicas), 99% C ≥ 29,850."""
    assert fewest([1.0, 29.0], [60.0, 0.0], [60_000.0, 0.0], 1.0, 0.5) == 20
    assert fewest([1.0, 29.0], [60.0, 0.0], [60_000.0, 0.0], 1.0, 0.99) == 30


def test_no_arrivals_need_no_replicas() -> None:
    assert fewest([5.0] * 10, [0.0] * 10, [0.0] * 10, 1.9, 0.99) == 0
