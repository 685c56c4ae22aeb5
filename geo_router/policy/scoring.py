"""Which region answers a request soonest: an estimate of time to first token,

    TTFT ≈ network RTT + queueing delay + prefill time,

per region, and a choice among them that keeps shared prefixes and sessions where
they already are and does not flap. Pure: plain data in, a decision out; the live
router and the simulator call the same functions. They are compiled, in
routing_core/src/scoring.rs (the memory in routing_core/src/memory.rs): this module is
their Python face, and the one place Python code imports them from (`RttCorrector`, the
correction learned online, is in routing_core/src/rtt_corrector.rs).

Replica speed is the region's `ReplicaProfile` (meridian_core/replica_model.py, the one
model of it). The region's load is taken as spread evenly over its n ready replicas: r
running and w waiting requests each. A replica batches continuously and prefills first
come, first served, so a new request starts once both

- the prefill ahead of it is done: each waiting request prefills a typical prompt while
  r sequences decode, w · prefill_s(typical prompt, r); and
- a sequence slot is free: a replica runs at most S sequences, `max_num_seqs` or as many
  typical requests (prompt + output tokens) as its KV cache holds, if fewer. With all S
  taken one finishes about every typical output · decode_step_s(S) / S, so the
  r + w + 1 − S requests beyond them wait that long each.

The queueing delay is the longer of the two: whichever stage is the bottleneck paces the
queue, and the other keeps up. The request's own uncached prompt then prefills in
prefill_s(uncached, r), stretched when the KV cache is nearly full (preemption and
recomputation). A region with no ready replica adds the time until one is ready.
"Typical" is the workload the spec's `router.scoring` assumes; what the estimate gets
wrong, engine speed and network path alike, `RttCorrector` learns from observed answers.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import routing_core
from meridian_core.geo import EARTH_RADIUS_KM, LatLon
from meridian_core.replica_model import ReplicaProfile
from meridian_core.rtt import RTT_INTERCEPT_MS, RTT_MS_PER_KM
from meridian_core.spec import ScoringSpec
from routing_core import (
    BLOCK_BYTES,  # prompt-cache affinity's grain, in bytes of prompt text (about 64 tokens)
    Estimate,
    PrefixIndex,
    RouteDecision,
    RoutingMemory,
    RttCorrector,
    SpillPrice,
    prefix_blocks,  # the chained keys of a prompt text's leading blocks
)

__all__ = [
    "BLOCK_BYTES",
    "Estimate",
    "PrefixIndex",
    "RegionLoad",
    "RequestFacts",
    "RouteDecision",
    "RoutingMemory",
    "RttCorrector",
    "SpillPrice",
    "choose",
    "estimate",
    "prefix_blocks",
]

# The network model's constants, passed to the compiled scorer rather than declared twice.
NETWORK = (EARTH_RADIUS_KM, RTT_INTERCEPT_MS, RTT_MS_PER_KM)
# What routing_core reads of a replica profile (routing_core/src/scoring.rs, `Profile`).
PROFILE_FIELDS = {
    "prefill_tokens_per_s",
    "decode_base_s",
    "decode_per_seq_s",
    "kv_capacity_tokens",
    "max_num_seqs",
    "max_batched_tokens",
}


@dataclass(frozen=True)
class RegionLoad:
    """One region as the router sees it at one instant."""

    name: str
    location: LatLon
    ready_replicas: int
    running: int = 0
    waiting: int = 0
    in_flight: int = 0  # the router's own requests to this region, not yet finished
    kv_cache_usage: float = 0.0
    rtt_correction_ms: float = 0.0  # learned online; see RttCorrector
    # With no ready replica: how long until one is (a start under way, or the whole
    # cold start of a region scaled to zero, which a request wakes).
    cold_start_ms: float = 0.0

    @property
    def cold(self) -> bool:
        return self.ready_replicas == 0


@dataclass(frozen=True)
class RequestFacts:
    client: LatLon
    prompt_tokens: int
    prefix_blocks: tuple[Hashable, ...] = ()  # chained hashes of the leading prompt blocks
    tokens_per_block: int = 0
    session: str | None = None
    cell: Hashable = None  # a coarse client area, for hysteresis


def estimate(
    region: RegionLoad, request: RequestFacts, cached_tokens: int, profile: ReplicaProfile, scoring: ScoringSpec
) -> Estimate:
    """`region`'s estimate of `request`'s TTFT, `cached_tokens` of its prompt cached there."""
    return routing_core.estimate(region, request, cached_tokens, profile, scoring, NETWORK)


def choose(
    regions: Sequence[RegionLoad],
    request: RequestFacts,
    memory: RoutingMemory,
    profiles: Mapping[str, ReplicaProfile],
    scoring: ScoringSpec,
) -> RouteDecision | None:
    """Rank the regions (all able to serve) for `request`; None if there are none.
    `profiles` holds each region's replica profile by region name.

    The nearest region wins unless another's cost is lower: its TTFT, with the RTT it adds
    over the nearest region's counted `spill_rtt_factor` times, marked up by the memory's
    `SpillPrice` while spills run over `mean_rtt_budget`. A client area's last region gets
    `hysteresis_ms` off its TTFT. A session stays where it is while its TTFT is within
    `affinity_margin_ms` of the best's; a cached prefix pulls within that margin of the best's
    cost. A cold region (no ready replica yet) is held for when waiting for its start is
    sooner than going elsewhere ("hold"); one slower to start than `max_hold_ms` goes last.
    When the nearest region is cold and another wins, the request spills ("spill").
    """
    return routing_core.choose(regions, request, memory, profiles, scoring, NETWORK)
