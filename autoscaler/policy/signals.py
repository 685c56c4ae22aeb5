"""What a scaling policy sees and what it answers: plain data, shared by the live
Ray Serve adapter and the trace-driven simulator.

A policy is called once per decision interval for one (model, region). It gets the
region's recent demand and load and its own state from the previous call, and
returns a replica target with the reason for it plus its next state. The state is a
JSON-able dict because Ray Serve keeps a custom policy's state in `policy_state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

PolicyState = dict[str, Any]


@dataclass(frozen=True)
class DemandSample:
    """Arrivals in one interval [start_s, start_s + duration_s), and the tokens counted in it.

    A trace counts a request's tokens when it arrives. A live engine counts its prompt
    at its first token and its output as it is generated, so the interval's tokens
    belong to the `prefilled` requests, not to its arrivals: per-request means divide
    by `prefilled`, which a trace sets to `requests`.
    """

    start_s: float
    duration_s: float
    requests: int
    prompt_tokens: int
    output_tokens: int
    prefilled: int


@dataclass(frozen=True)
class RegionSignals:
    now_s: float
    # Oldest first, contiguous, ending at now_s; as much history as the caller keeps.
    demand: tuple[DemandSample, ...]
    ready: int
    starting: int
    stopping: int
    # Summed over ready replicas.
    running: int
    waiting: int
    # Mean KV-cache use over ready replicas, 0..1.
    kv_usage: float
    # Recent observed percentiles at the SLO's quantile; None when nothing was served.
    ttft_ms: float | None
    itl_ms: float | None
    # Measured (or, before the first start, configured) replica cold start.
    cold_start_s: float


@dataclass(frozen=True)
class ScalingDecision:
    target: int
    reason: str


class ScalingPolicy(Protocol):
    name: str

    def decide(self, signals: RegionSignals, state: PolicyState) -> tuple[ScalingDecision, PolicyState]: ...
