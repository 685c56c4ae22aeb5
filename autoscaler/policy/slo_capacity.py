"""How many replicas keep a request stream within the latency SLO: queueing-aware
capacity from the replica performance model. Pure functions.

Prefill is the queue: with least-loaded assignment and FCFS prefill on every replica,
n replicas behave like an M/M/n queue whose service time is one prompt's prefill. The
waiting time then has the tail P(W > x) = C(n, a) · exp(−(n/S − λ) x) (Erlang C, a = λS),
so the `attainment` quantile of TTFT is bounded by the waiting quantile plus the
(exponential) service quantile S · ln(1 / (1 − attainment)). Decode is checked through
Little's law: each replica runs b = λ/n · (prefill + output · ITL) sequences, the step
at that batch, stretched by the replica's prefill share λS/n, must stay within the ITL
target, and b must fit `max_num_seqs` and the KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from meridian_core.replica_model import ReplicaProfile

# KV cache fraction planned for; the rest absorbs long requests.
KV_PLANNING_FRACTION = 0.9


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


def replica_itl_s(profile: ReplicaProfile, workload: Workload, servers: int, service_s: float) -> tuple[float, float]:
    """(ITL, running sequences) of one of `servers` replicas sharing `workload`."""
    per_replica = workload.rate_rps / servers
    share = min(per_replica * service_s, 1.0)
    itl = profile.itl_s(1.0, share)
    batch = 1.0
    for _ in range(8):
        batch = max(per_replica * (service_s + workload.mean_output_tokens * itl), 1.0)
        itl = profile.itl_s(batch, share)
    return itl, batch


def replicas_needed(
    profile: ReplicaProfile,
    workload: Workload,
    slo_ttft_s: float,
    slo_itl_s: float,
    attainment: float,
    limit: int,
) -> int:
    """Fewest replicas (≤ `limit`) whose planned TTFT and ITL meet the SLO at `attainment`."""
    if workload.rate_rps <= 0:
        return 0
    # Prefill shares steps with the decodes already running; start from a light batch.
    service_s = profile.prefill_s(workload.mean_prompt_tokens, 1.0)
    tokens = workload.mean_prompt_tokens + workload.mean_output_tokens
    first = max(1, math.ceil(workload.rate_rps * service_s))
    for servers in range(first, limit + 1):
        itl, batch = replica_itl_s(profile, workload, servers, service_s)
        service_at_batch = profile.prefill_s(workload.mean_prompt_tokens, batch)
        if ttft_quantile_s(servers, workload.rate_rps, service_at_batch, attainment) > slo_ttft_s:
            continue
        if itl > slo_itl_s:
            continue
        if batch > profile.max_num_seqs or batch * tokens > KV_PLANNING_FRACTION * profile.kv_capacity_tokens:
            continue
        return servers
    return limit
