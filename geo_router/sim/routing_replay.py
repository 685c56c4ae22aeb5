"""Replay a request trace against simulated regions under several routing policies.

The model, kept small on purpose:

- **Trace**: Mooncake format, one JSON object a line: `timestamp` (ms), `input_length`,
  `output_length`, `hash_ids` (prefix-block hashes, 512 tokens a block).
- **Clients**: each request comes from one of `CLIENT_METROS`, weighted by rough share of
  internet users (documented below). The metro is drawn from a hash of the request's
  first two prefix blocks, so requests of one conversation share a client. (Not the
  first block alone: in the Mooncake trace every request starts with the same block, a
  shared system prompt.)
- **Network**: client→region RTT is the distance prior of `meridian_core.rtt`.
- **Replicas** serve by their region's `ReplicaProfile` (meridian_core/replica_model.py),
  given explicitly: the simulator's truth, never the router's settings. A replica
  prefills first come, first served, one request at a time; a request also waits until
  the replica runs fewer than `max_num_seqs` sequences and its KV cache holds the
  request's prompt + output tokens (sequences running then finish first). Its uncached
  prompt takes `prefill_s(uncached, running)`, its output tokens one decode step each at
  the batch it joins (`decode_step_s`); it holds its sequence slot and KV cache until its
  last token. Each replica keeps an LRU cache of `cache_blocks` prefix blocks; a
  request's leading blocks found there are not prefilled again.

TTFT = RTT + wait for the prefill ahead, a slot and KV room + prefill. Policies see what
a live router sees (each replica's running and waiting requests at the arrival instant,
their own memory of where prefixes went), never the replicas' caches. Meridian's policy
estimates with the same profiles the replicas serve by: the router's belief is the one model.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geo_router.policy.replica_affinity import ReplicaAffinity
from geo_router.policy.scoring import RegionLoad, RequestFacts, RoutingMemory, choose
from meridian_core.geo import LatLon, haversine_km
from meridian_core.replica_model import ReplicaProfile
from meridian_core.rtt import prior_rtt_ms
from meridian_core.spec import ScoringSpec

BLOCK_TOKENS = 512

# Where clients are: large metros per continent, weighted by approximate share of the
# world's internet users (ITU 2023: Asia ~53%, Europe ~14%, Americas ~21%, Africa ~10%,
# Oceania ~1%), split evenly among each continent's metros listed here.
CLIENT_METROS: tuple[tuple[str, LatLon, float], ...] = (
    ("Tokyo", LatLon(35.68, 139.69), 0.106),
    ("Mumbai", LatLon(19.08, 72.88), 0.106),
    ("Shanghai", LatLon(31.23, 121.47), 0.106),
    ("Singapore", LatLon(1.35, 103.82), 0.106),
    ("Jakarta", LatLon(-6.21, 106.85), 0.106),
    ("London", LatLon(51.51, -0.13), 0.047),
    ("Frankfurt", LatLon(50.11, 8.68), 0.047),
    ("Madrid", LatLon(40.42, -3.70), 0.046),
    ("New York", LatLon(40.71, -74.01), 0.053),
    ("Chicago", LatLon(41.88, -87.63), 0.052),
    ("San Francisco", LatLon(37.77, -122.42), 0.052),
    ("São Paulo", LatLon(-23.55, -46.63), 0.053),
    ("Lagos", LatLon(6.52, 3.38), 0.05),
    ("Johannesburg", LatLon(-26.20, 28.05), 0.05),
    ("Sydney", LatLon(-33.87, 151.21), 0.01),
)


@dataclass(frozen=True)
class TraceRequest:
    arrival_ms: float
    input_tokens: int
    output_tokens: int
    blocks: tuple[int, ...]


@dataclass(frozen=True)
class SimRegion:
    name: str
    location: LatLon
    replicas: int
    profile: ReplicaProfile


def load_mooncake(path: Path, limit: int | None = None) -> list[TraceRequest]:
    requests = []
    with open(path) as lines:
        for line in lines:
            if limit is not None and len(requests) >= limit:
                break
            row = json.loads(line)
            requests.append(
                TraceRequest(
                    float(row["timestamp"]), int(row["input_length"]), int(row["output_length"]), tuple(row["hash_ids"])
                )
            )
    return requests


def client_of(request: TraceRequest) -> LatLon:
    seed = str(request.blocks[:2] if request.blocks else request.arrival_ms).encode()
    draw = int.from_bytes(hashlib.blake2b(seed, digest_size=8).digest(), "big") / 2**64
    total = sum(weight for _, _, weight in CLIENT_METROS)
    for _, location, weight in CLIENT_METROS:
        draw -= weight / total
        if draw < 0:
            return location
    return CLIENT_METROS[-1][1]


@dataclass
class Replica:
    region: str
    index: int
    profile: ReplicaProfile
    prefill_free_ms: float = 0.0  # when the replica's prefill is next free
    # (end ms, KV tokens) of the sequences running at the latest prefill start, a heap.
    # Starts only move forward, so it is retired up to each new start.
    batch: list[tuple[float, int]] = field(default_factory=list)
    kv_tokens: int = 0  # held by `batch`
    starts: list[float] = field(default_factory=list)  # start times of requests not yet started (heap)
    ends: list[float] = field(default_factory=list)  # end times of started requests (heap)
    cache: OrderedDict[int, None] = field(default_factory=OrderedDict)

    def load_at(self, now: float) -> tuple[int, int]:
        """(running, waiting) at `now`."""
        while self.starts and self.starts[0] <= now:
            heapq.heappop(self.starts)
        while self.ends and self.ends[0] <= now:
            heapq.heappop(self.ends)
        waiting = len(self.starts)
        return len(self.ends) - waiting, waiting

    def cached_blocks(self, blocks: Sequence[int]) -> int:
        held = 0
        for block in blocks:
            if block not in self.cache:
                break
            held += 1
        return held

    def serve(self, request: TraceRequest, arrive_ms: float, cache_blocks: int) -> tuple[float, int]:
        """Run `request` arriving at `arrive_ms`; return (ms until its first token, cached blocks)."""
        profile = self.profile
        cached = self.cached_blocks(request.blocks)
        start = max(arrive_ms, self.prefill_free_ms)
        batch = self.batch
        while batch and batch[0][0] <= start:
            self.kv_tokens -= heapq.heappop(batch)[1]
        kv_needed = request.input_tokens + request.output_tokens
        while batch and (len(batch) >= profile.max_num_seqs or self.kv_tokens + kv_needed > profile.kv_capacity_tokens):
            end, tokens = heapq.heappop(batch)
            self.kv_tokens -= tokens
            start = max(start, end)
        decoding = len(batch)
        uncached = max(0, request.input_tokens - cached * BLOCK_TOKENS)
        first_token = start + 1000.0 * profile.prefill_s(uncached, decoding)
        end = first_token + 1000.0 * max(request.output_tokens - 1, 0) * profile.decode_step_s(decoding + 1)
        self.prefill_free_ms = first_token
        heapq.heappush(batch, (end, kv_needed))
        self.kv_tokens += kv_needed
        heapq.heappush(self.starts, start)
        heapq.heappush(self.ends, end)
        for block in request.blocks:
            self.cache[block] = None
            self.cache.move_to_end(block)
        while len(self.cache) > cache_blocks:
            self.cache.popitem(last=False)
        return first_token - arrive_ms, cached


@dataclass
class World:
    regions: list[SimRegion]
    replicas: dict[str, list[Replica]] = field(init=False)

    def __post_init__(self) -> None:
        self.replicas = {r.name: [Replica(r.name, i, r.profile) for i in range(r.replicas)] for r in self.regions}

    def nearest(self, client: LatLon) -> SimRegion:
        return min(self.regions, key=lambda r: (haversine_km(client, r.location), r.name))

    def region_load(self, region: SimRegion, now: float) -> RegionLoad:
        loads = [replica.load_at(now) for replica in self.replicas[region.name]]
        return RegionLoad(
            region.name,
            region.location,
            ready_replicas=region.replicas,
            running=sum(running for running, _ in loads),
            waiting=sum(waiting for _, waiting in loads),
        )


# A policy picks (region, replica) for a request; it may keep state between calls.
Policy = Callable[[World, TraceRequest, LatLon], Replica]


def least_outstanding(replicas: Iterable[Replica], now: float) -> Replica:
    return min(replicas, key=lambda r: (sum(r.load_at(now)), r.region, r.index))


def prefix_aware(replicas: Sequence[Replica], request: TraceRequest, memory: dict, now: float) -> Replica:
    """llm-d-style weighted scorer within a region: prefix hits (from the router's own
    memory of where blocks went) weighted 2, queue depth weighted 1, both normalised."""
    blocks = request.blocks or (0,)

    def score(replica: Replica) -> float:
        held = 0
        for block in blocks:
            if replica.index not in memory.get((replica.region, block), ()):
                break
            held += 1
        running, waiting = replica.load_at(now)
        return 2.0 * held / len(blocks) - 1.0 * min(1.0, (running + waiting) / 32)

    best = max(replicas, key=lambda r: (score(r), -r.index))
    for block in request.blocks:
        memory.setdefault((best.region, block), set()).add(best.index)
    return best


def nearest_policy() -> Policy:
    return lambda world, request, client: least_outstanding(
        world.replicas[world.nearest(client).name], request.arrival_ms
    )


def least_load_policy() -> Policy:
    return lambda world, request, client: least_outstanding(
        (r for replicas in world.replicas.values() for r in replicas), request.arrival_ms
    )


def prefix_within_region_policy() -> Policy:
    memory: dict = {}
    return lambda world, request, client: prefix_aware(
        world.replicas[world.nearest(client).name], request, memory, request.arrival_ms
    )


def meridian_policy(scoring: ScoringSpec) -> Policy:
    """The live router's scorer picks the region, estimating with the profiles the regions'
    replicas serve by; the region's ingress picks the replica by prefix affinity under a
    load bound, as it does live (`geo_router.policy.replica_affinity`)."""
    memory = RoutingMemory()
    in_region: dict[str, ReplicaAffinity] = {}

    def route(world: World, request: TraceRequest, client: LatLon) -> Replica:
        facts = RequestFacts(
            client,
            request.input_tokens,
            request.blocks,
            tokens_per_block=BLOCK_TOKENS,
            cell=(round(client.lat), round(client.lon)),
        )
        decision = choose(
            [world.region_load(r, request.arrival_ms) for r in world.regions],
            facts,
            memory,
            {r.name: r.profile for r in world.regions},
            scoring,
        )
        region = decision.ranked[0]
        memory.remember(region, facts, decision)
        affinity = in_region.setdefault(region, ReplicaAffinity())
        replicas = world.replicas[region]
        requests = {replica.index: sum(replica.load_at(request.arrival_ms)) for replica in replicas}
        return replicas[affinity.choose(requests, request.blocks, request.arrival_ms / 1000.0)]

    return route


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    ttft_mean_ms: float
    ttft_p99_ms: float
    cache_hit_rate: float
    spill_rate: float
    mean_rtt_ms: float
    requests: int

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "policy": self.policy,
            "ttft_mean_ms": round(self.ttft_mean_ms, 1),
            "ttft_p99_ms": round(self.ttft_p99_ms, 1),
            "cache_hit_rate": round(self.cache_hit_rate, 4),
            "spill_rate": round(self.spill_rate, 4),
            "mean_rtt_ms": round(self.mean_rtt_ms, 1),
            "requests": self.requests,
        }


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def simulate(
    name: str, policy: Policy, trace: Sequence[TraceRequest], regions: list[SimRegion], cache_blocks: int
) -> PolicyResult:
    world = World(regions)
    ttfts, rtts = [], []
    hit_blocks = total_blocks = spilled = 0
    for request in trace:
        client = client_of(request)
        replica = policy(world, request, client)
        region = next(r for r in regions if r.name == replica.region)
        rtt = prior_rtt_ms(haversine_km(client, region.location))
        # The request reaches the region half a round trip after it was sent.
        wait_and_prefill, cached = replica.serve(request, request.arrival_ms + rtt / 2, cache_blocks)
        ttfts.append(rtt + wait_and_prefill)
        rtts.append(rtt)
        hit_blocks += cached
        total_blocks += len(request.blocks)
        spilled += region.name != world.nearest(client).name
    return PolicyResult(
        name,
        sum(ttfts) / len(ttfts),
        percentile(ttfts, 99),
        hit_blocks / total_blocks if total_blocks else 0.0,
        spilled / len(trace),
        sum(rtts) / len(rtts),
        len(trace),
    )


def compare_policies(
    trace: Sequence[TraceRequest], regions: list[SimRegion], cache_blocks: int, scoring: ScoringSpec
) -> list[PolicyResult]:
    """Every policy over `trace`; the regions' replicas serve by their own profiles."""
    policies: list[tuple[str, Policy]] = [
        ("nearest", nearest_policy()),
        ("least-load", least_load_policy()),
        ("prefix-aware-in-region", prefix_within_region_policy()),
        ("meridian", meridian_policy(scoring)),
    ]
    return [simulate(name, make, trace, regions, cache_blocks) for name, make in policies]
