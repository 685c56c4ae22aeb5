"""How many replicas keep a request stream within the latency SLO: queueing-aware
capacity from the replica performance model. Pure functions.

Prefill is the queue: with least-loaded assignment and FCFS prefill on every replica,
n replicas behave like an M/M/n queue whose service time is one prompt's prefill. The
waiting time then has the tail P(W > x) = C(n, a) · exp(−(n/S − λ) x) (Erlang C, a = λS),
so the `attainment` quantile of TTFT is bounded by the waiting quantile plus the
(exponential) service quantile S · ln(1 / (1 − attainment)). Decode is checked through
Little's law: each replica runs b = λ/n · (S(b) + output · ITL) sequences, the step at
that batch, stretched by the replica's prefill share λS(b)/n, must stay within the ITL
target, and b must fit `max_num_seqs` and the KV cache. b, S and the ITL depend on each
other: they are taken at their fixed point, and a replica whose batch has none (it
grows without bound: decode and prefill together need more than the engine's time) is
overloaded, however light prefill alone looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from meridian_core.replica_model import ReplicaProfile

# KV cache fraction planned for; the rest absorbs long requests.
KV_PLANNING_FRACTION = 0.9
# The batch's fixed point is found by iterating from one sequence; the batch only grows,
# and one past this many times max_num_seqs has no fixed point the replica can hold.
FIXED_POINT_ROUNDS = 200
OVERLOADED_BATCH_FACTOR = 4


@dataclass(frozen=True)
class Workload:
    rate_rps: float
    mean_prompt_tokens: float
    mean_output_tokens: float


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in an M/M/`servers` queue with `offered` = λS."""
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return 1.0
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered * blocking / (k + offered * blocking)
    return servers * blocking / (servers - offered * (1.0 - blocking))


def ttft_quantile_s(servers: int, rate: float, service_s: float, attainment: float) -> float:
    miss = 1.0 - attainment
    offered = rate * service_s
    if offered >= servers:
        return math.inf
    waits = erlang_c(servers, offered)
    wait_q = 0.0 if waits <= miss else math.log(waits / miss) / (servers / service_s - rate)
    return wait_q + service_s * math.log(1.0 / miss)


def replica_itl_s(profile: ReplicaProfile, workload: Workload, servers: int) -> tuple[float, float, float]:
    """(ITL, running sequences, prefill time) of one of `servers` replicas sharing
    `workload`, at their fixed point: the batch sets the prefill time and the step, which
    set the ITL and the prefill's share of the engine, which set the batch (Little's law).
    Without a fixed point (the batch grows without bound) the replica is overloaded: inf."""
    per_replica = workload.rate_rps / servers
    batch = 1.0
    for _ in range(FIXED_POINT_ROUNDS):
        service_s = profile.prefill_s(workload.mean_prompt_tokens, batch)
        share = per_replica * service_s
        if share >= 1.0:
            return math.inf, math.inf, service_s
        itl = profile.itl_s(batch, share)
        following = max(per_replica * (service_s + workload.mean_output_tokens * itl), 1.0)
        if following > OVERLOADED_BATCH_FACTOR * profile.max_num_seqs:
            return math.inf, following, service_s
        if abs(following - batch) <= 1e-6 * following:
            return itl, following, service_s
        batch = following
    return math.inf, batch, service_s


def replicas_needed(
    profile: ReplicaProfile,
    workload: Workload,
    slo_ttft_s: float,
    slo_itl_s: float,
    attainment: float,
    limit: int,
) -> int:
    """Fewest replicas (≤ `limit`) whose planned TTFT and ITL meet the SLO at `attainment`.
    When a prompt's service time alone, even at the lightest batch, misses the TTFT target
    at that quantile, no count meets it: the fewest replicas that bring the waiting
    quantile to zero instead (more only shrink the batch's small share of each prefill)."""
    if workload.rate_rps <= 0:
        return 0
    # The first count that could keep up with prefill alone, at a light batch.
    service_s = profile.prefill_s(workload.mean_prompt_tokens, 1.0)
    tokens = workload.mean_prompt_tokens + workload.mean_output_tokens
    first = max(1, math.ceil(workload.rate_rps * service_s))
    # Even at the lightest batch, one prompt's service quantile misses the target.
    unreachable = service_s * math.log(1.0 / (1.0 - attainment)) > slo_ttft_s
    for servers in range(first, limit + 1):
        itl, batch, service_at_batch = replica_itl_s(profile, workload, servers)
        if itl > slo_itl_s:
            continue
        if batch > profile.max_num_seqs or batch * tokens > KV_PLANNING_FRACTION * profile.kv_capacity_tokens:
            continue
        if ttft_quantile_s(servers, workload.rate_rps, service_at_batch, attainment) <= slo_ttft_s:
            return servers
        if unreachable and erlang_c(servers, workload.rate_rps * service_at_batch) <= 1.0 - attainment:
            # The wait quantile is zero: what is left is the service time, which more
            # replicas cannot bring under the target. The floor, not the limit.
            return servers
    return limit


def fluid_replicas_needed(
    durations_s: np.ndarray,
    requests: np.ndarray,
    prompt_tokens: np.ndarray,
    replica_tokens_per_s: float,
    wait_budget_s: float,
    attainment: float,
    limit: int,
) -> int:
    """Fewest replicas (≤ `limit`) that keep `attainment` of the requests in a recorded
    arrival history within `wait_budget_s` of queueing, replaying it through one pooled
    prefill queue as a fluid: least-loaded assignment pools the replicas, and a prompt's
    prefill is short beside a TTFT, so the work ahead of a request is the queue's backlog
    over the fleet's prefill rate. Arrivals are spread evenly within each interval.

    Bursts are why: traffic is far burstier than Poisson at the scale of a TTFT and a
    burst is over before any cold start, so the count must already carry the backlog a
    burst builds, and a backlog carried between intervals is as real as the burst itself."""
    total = float(requests.sum())
    if total <= 0 or replica_tokens_per_s <= 0:
        return 0
    busy = durations_s > 0
    peak_rate = float((prompt_tokens[busy] / durations_s[busy]).max(initial=0.0))
    # A count that outruns the busiest interval never builds a backlog: no need to look past it.
    counts = min(limit, math.ceil(peak_rate / replica_tokens_per_s) + 1)
    capacity = np.arange(1, counts + 1, dtype=np.float64) * replica_tokens_per_s
    allowed = capacity * max(wait_budget_s, 0.0)
    backlog = np.zeros(counts)
    met = np.zeros(counts)
    for duration, count, tokens in zip(durations_s.tolist(), requests.tolist(), prompt_tokens.tolist(), strict=True):
        if duration <= 0:
            continue
        drift = (tokens / duration - capacity) * duration  # backlog change over the interval
        if count > 0:
            # The backlog moves linearly within the interval: the share of it spent at or
            # below the allowed backlog is the share of its (evenly spread) arrivals met.
            with np.errstate(divide="ignore", invalid="ignore"):
                rising = np.clip((allowed - backlog) / drift, 0.0, 1.0)
                falling = 1.0 - np.clip((backlog - allowed) / -drift, 0.0, 1.0)
            flat = (backlog <= allowed).astype(np.float64)
            met += count * np.where(drift > 0, rising, np.where(drift < 0, falling, flat))
        backlog = np.maximum(backlog + drift, 0.0)
    enough = met >= attainment * total - 1e-9
    return int(np.argmax(enough)) + 1 if enough.any() else limit
