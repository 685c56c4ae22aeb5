"""The routing evaluation suite: one trace replayed over many fleets, loads and cache sizes.

A cell is (arrival pattern, region count, load factor, cache blocks per replica); every
policy of `compare_policies` runs in every cell with one `ScoringSpec`.

- **Regions** are chosen from the shared region list (`regions.csv`: cloud, region,
  coordinates) greedily, as a provider would place k data centres for these clients:
  each next region is the one that most lowers the clients' demand-weighted prior RTT
  to their nearest chosen region (`CLIENT_METROS` weights). Deterministic; names sort ties.
- **Replicas**: two per region on average, apportioned to each region's share of the
  trace's requests under nearest-only routing (largest remainder, at least one each).
- **Load** is the trace's offered prompt tokens per second over the fleet's prefill rate
  (replicas × `prefill_tokens_per_s`, before any prefix cache). The trace is time-warped
  (every arrival scaled by one factor) so that ratio is the load factor; request sizes,
  prefixes and order are the trace's own.
- **Arrival patterns**: `trace` keeps the trace's own (bursty) inter-arrival times;
  `poisson` replaces them with a Poisson process of the same mean rate (seeded), so a
  policy is not judged on the trace's burst shape alone.

Each cell also runs Meridian's scorer with its RTT bound lifted (`without_rtt_bound`):
not a contender, a measurement of what keeping the mean RTT within the budget costs.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from geo_router.sim.routing_replay import (
    CLIENT_METROS,
    PolicyResult,
    SimRegion,
    TraceRequest,
    client_of,
    compare_policies,
    meridian_policy,
    simulate,
)
from meridian_core.geo import LatLon, haversine_km
from meridian_core.replica_model import ReplicaProfile
from meridian_core.rtt import prior_rtt_ms
from meridian_core.spec import ScoringSpec

ARRIVALS = ("trace", "poisson")
# A budget no spill can overspend: the spill price's markup then stays at 1.
UNBOUNDED_RTT_BUDGET = 1e6
REPLICAS_PER_REGION = 2
POISSON_SEED = 7


@dataclass(frozen=True)
class Site:
    name: str
    location: LatLon


@dataclass(frozen=True)
class Cell:
    arrivals: str
    regions: int
    load: float
    cache_blocks: int


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    results: tuple[PolicyResult, ...]
    meridian_without_rtt_bound: PolicyResult


def load_sites(path: Path) -> list[Site]:
    with open(path) as rows:
        return [
            Site(f"{row['cloud']}/{row['region']}", LatLon(float(row["lat"]), float(row["lon"])))
            for row in csv.DictReader(rows)
        ]


def _weighted_rtt(chosen: Sequence[Site]) -> float:
    return sum(
        weight * min(prior_rtt_ms(haversine_km(metro, site.location)) for site in chosen)
        for _, metro, weight in CLIENT_METROS
    )


def choose_sites(sites: Sequence[Site], count: int) -> list[Site]:
    """Greedy placement: each next site most lowers the clients' weighted RTT to their nearest."""
    chosen: list[Site] = []
    for _ in range(count):
        remaining = [s for s in sites if s not in chosen]
        chosen.append(min(remaining, key=lambda s: (_weighted_rtt([*chosen, s]), s.name)))
    return chosen


def provision(sites: Sequence[Site], trace: Sequence[TraceRequest], profile: ReplicaProfile) -> list[SimRegion]:
    """`REPLICAS_PER_REGION` × len(sites) replicas, apportioned to nearest-only demand."""
    demand = dict.fromkeys((s.name for s in sites), 0)
    for request in trace:
        client = client_of(request)
        demand[min(sites, key=lambda s: (haversine_km(client, s.location), s.name)).name] += 1
    total = REPLICAS_PER_REGION * len(sites)
    quotas = {name: total * count / len(trace) for name, count in demand.items()}
    replicas = {name: max(1, int(quota)) for name, quota in quotas.items()}
    by_remainder = sorted(quotas, key=lambda name: (-(quotas[name] - int(quotas[name])), name))
    for name in by_remainder[: max(0, total - sum(replicas.values()))]:
        replicas[name] += 1
    return [SimRegion(s.name, s.location, replicas[s.name], profile) for s in sites]


def with_arrivals(trace: Sequence[TraceRequest], arrivals: str) -> list[TraceRequest]:
    """The trace as recorded, or the same requests in order at Poisson arrivals of its mean rate."""
    if arrivals == "trace":
        return list(trace)
    span = trace[-1].arrival_ms - trace[0].arrival_ms
    rng = random.Random(POISSON_SEED)
    now, out = trace[0].arrival_ms, []
    for request in trace:
        out.append(replace(request, arrival_ms=now))
        now += rng.expovariate(len(trace) / span)
    return out


def at_load(trace: Sequence[TraceRequest], regions: Sequence[SimRegion], load: float) -> list[TraceRequest]:
    """Time-warp `trace` so its prompt tokens per second are `load` of the fleet's prefill rate."""
    start = trace[0].arrival_ms
    span_s = (trace[-1].arrival_ms - start) / 1000.0
    offered = sum(r.input_tokens for r in trace) / span_s
    capacity = sum(r.replicas * r.profile.prefill_tokens_per_s for r in regions)
    stretch = offered / (load * capacity)
    return [replace(r, arrival_ms=start + (r.arrival_ms - start) * stretch) for r in trace]


def run_cell(
    cell: Cell, trace: Sequence[TraceRequest], sites: Sequence[Site], profile: ReplicaProfile, scoring: ScoringSpec
) -> CellResult:
    regions = provision(choose_sites(sites, cell.regions), trace, profile)
    requests = at_load(with_arrivals(trace, cell.arrivals), regions, cell.load)
    unbounded = meridian_policy(without_rtt_bound(scoring))
    return CellResult(
        cell,
        tuple(compare_policies(requests, regions, cell.cache_blocks, scoring)),
        simulate("meridian without the RTT bound", unbounded, requests, regions, cell.cache_blocks),
    )


def without_rtt_bound(scoring: ScoringSpec) -> ScoringSpec:
    """`scoring` with a spill costing its extra RTT once and no mean RTT budget."""
    return scoring.model_copy(update={"spill_rtt_factor": 1.0, "mean_rtt_budget": UNBOUNDED_RTT_BUDGET})
