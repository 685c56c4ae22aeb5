"""Which region answers a request soonest: an estimate of time to first token,

    TTFT ≈ network RTT + queueing delay + prefill time,

per region, and a choice among them that keeps shared prefixes and sessions where
they already are and does not flap. Pure: plain data in, a decision out; the live
router and the simulator call the same functions.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from meridian_core.geo import LatLon, haversine_km
from meridian_core.rtt import prior_rtt_ms


@dataclass(frozen=True)
class PerfModel:
    """How fast one replica is: what turns queue lengths and prompt sizes into time."""

    prefill_ms_per_token: float = 0.5
    # Requests one replica runs at once before more wait (vLLM's running batch).
    batch_slots: int = 16
    # A typical request, for how long the requests ahead of this one hold their slots.
    typical_prompt_tokens: int = 512
    decode_ms_per_token: float = 50.0
    typical_output_tokens: int = 256

    @property
    def slot_hold_ms(self) -> float:
        """How long a typical request holds a batch slot: its prefill, then its decode."""
        return (
            self.typical_prompt_tokens * self.prefill_ms_per_token
            + self.typical_output_tokens * self.decode_ms_per_token
        )


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


@dataclass(frozen=True)
class Estimate:
    region: str
    rtt_ms: float
    queue_ms: float
    prefill_ms: float
    cached_tokens: int

    @property
    def ttft_ms(self) -> float:
        return self.rtt_ms + self.queue_ms + self.prefill_ms


@dataclass(frozen=True)
class RouteDecision:
    ranked: tuple[str, ...]  # best first: the order to try regions in
    reason: str  # nearest | load | affinity | session | hold | spill
    estimates: tuple[Estimate, ...]


def estimate(region: RegionLoad, request: RequestFacts, cached_tokens: int, perf: PerfModel) -> Estimate:
    rtt = max(0.0, prior_rtt_ms(haversine_km(request.client, region.location)) + region.rtt_correction_ms)
    replicas = max(1, region.ready_replicas)
    # Polled counts lag by a poll interval; the router's own count is current. Whichever
    # says more is outstanding is nearer the truth.
    outstanding = max(region.running + region.waiting, region.in_flight)
    ahead = max(0.0, (outstanding - replicas * perf.batch_slots) / replicas)
    # With every slot busy, one frees about every slot_hold / batch_slots.
    queue = ahead * perf.slot_hold_ms / perf.batch_slots
    if region.cold:
        queue += region.cold_start_ms
    # Decode tokens of the running batch take little of a chunked-prefill step's token
    # budget, so a busy replica prefills about as fast as an idle one; a nearly full KV
    # cache, though, means preemption and recomputation.
    pressure = 1.0 / max(0.05, 1.0 - region.kv_cache_usage) if region.kv_cache_usage > 0.9 else 1.0
    uncached = max(0, request.prompt_tokens - cached_tokens)
    prefill = uncached * perf.prefill_ms_per_token * pressure
    return Estimate(region.name, rtt, queue, prefill, min(cached_tokens, request.prompt_tokens))


class LruMap:
    """A bounded mapping that forgets the least recently used key."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[Hashable, object] = OrderedDict()

    def get(self, key: Hashable) -> object | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Hashable, value: object) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class PrefixIndex:
    """Which regions recently served which prompt blocks: where a prefix is likely cached."""

    def __init__(self, capacity_blocks: int = 100_000):
        self._regions_of_block = LruMap(capacity_blocks)

    def cached_blocks(self, region: str, blocks: Sequence[Hashable]) -> int:
        """How many leading blocks `region` holds (chained hashes: a match implies its prefix)."""
        held = 0
        for block in blocks:
            regions = self._regions_of_block.get(block)
            if not regions or region not in regions:
                break
            held += 1
        return held

    def record(self, region: str, blocks: Sequence[Hashable]) -> None:
        for block in blocks:
            regions = self._regions_of_block.get(block)
            self._regions_of_block.put(block, (regions or frozenset()) | {region})


@dataclass(frozen=True)
class ScoringPolicy:
    # Keep a prefix or a session where it is unless elsewhere is faster by more than this.
    affinity_margin_ms: float = 50.0
    # The region a client area used last must be beaten by this much to be left.
    hysteresis_ms: float = 20.0
    # A request waits at most this long for a cold region's replica to start, unless
    # no warm region could take it (then it waits for the soonest, never a 503).
    max_hold_ms: float = 30_000.0


class RoutingMemory:
    """What the scorer remembers between requests: prefixes, sessions, last choices."""

    def __init__(self, capacity: int = 100_000):
        self.prefixes = PrefixIndex(capacity)
        self.sessions = LruMap(capacity)
        self.last_choice = LruMap(capacity)

    def remember(self, region: str, request: RequestFacts) -> None:
        self.prefixes.record(region, request.prefix_blocks)
        if request.session is not None:
            self.sessions.put(request.session, region)
        if request.cell is not None:
            self.last_choice.put(request.cell, region)


def choose(
    regions: Sequence[RegionLoad],
    request: RequestFacts,
    memory: RoutingMemory,
    perf: PerfModel = PerfModel(),
    policy: ScoringPolicy = ScoringPolicy(),
) -> RouteDecision | None:
    """Rank the regions (all able to serve) for `request`; None if there are none.

    A cold region (no ready replica yet) is held for when the estimate says waiting for
    its start is sooner than going elsewhere ("hold"); when the nearest region is cold
    and another wins, the request spills ("spill").
    """
    if not regions:
        return None
    nearest = min(regions, key=lambda r: (haversine_km(request.client, r.location), r.name)).name
    # Cold regions slower to start than a request may wait go last, unless all are.
    too_cold = {r.name for r in regions if r.cold and r.cold_start_ms > policy.max_hold_ms}
    if len(too_cold) == len(regions):
        too_cold = set()
    estimates = {
        r.name: estimate(
            r, request, memory.prefixes.cached_blocks(r.name, request.prefix_blocks) * request.tokens_per_block, perf
        )
        for r in regions
    }
    previous = memory.last_choice.get(request.cell) if request.cell is not None else None

    def cost(name: str) -> float:
        return estimates[name].ttft_ms - (policy.hysteresis_ms if name == previous else 0.0)

    order = sorted((name for name in estimates if name not in too_cold), key=lambda name: (cost(name), name))
    best = order[0]
    reason = "nearest" if best == nearest else "load"
    sticky = _sticky_region(request, memory, {n: e for n, e in estimates.items() if n not in too_cold})
    if sticky is not None and sticky[0] != best and cost(sticky[0]) <= cost(best) + policy.affinity_margin_ms:
        best, reason = sticky
        order.remove(best)
        order.insert(0, best)
    elif sticky is not None and sticky[0] == best and reason == "load":
        reason = sticky[1]
    cold = {r.name for r in regions if r.cold}
    if best in cold:
        reason = "hold"
    elif nearest in cold:
        reason = "spill"
    order += sorted(too_cold, key=lambda name: (cost(name), name))
    return RouteDecision(tuple(order), reason, tuple(estimates[name] for name in order))


def _sticky_region(
    request: RequestFacts, memory: RoutingMemory, estimates: dict[str, Estimate]
) -> tuple[str, str] | None:
    """The region a session or a cached prefix pulls this request towards, and why."""
    if request.session is not None:
        region = memory.sessions.get(request.session)
        if region in estimates:
            return str(region), "session"
    holding = [e for e in estimates.values() if e.cached_tokens > 0]
    if holding:
        return max(holding, key=lambda e: (e.cached_tokens, -e.ttft_ms)).region, "affinity"
    return None


class RttCorrector:
    """Per region, an EWMA of (observed time to first byte − predicted TTFT).

    The distance prior knows nothing of a region's real network path or of engine speed;
    the residual the router observes on every answered request corrects both.
    """

    def __init__(self, alpha: float = 0.2, limit_ms: float = 5_000.0):
        self.alpha = alpha
        self.limit_ms = limit_ms
        self.correction_ms: dict[str, float] = {}

    def correction_for(self, region: str) -> float:
        """The region's learned correction; before any evidence, the fleet's average.

        Much of a residual is model error common to every region (engine speed, prompt
        size); a region not yet observed must not look faster just for that.
        """
        if region in self.correction_ms:
            return self.correction_ms[region]
        if not self.correction_ms:
            return 0.0
        return sum(self.correction_ms.values()) / len(self.correction_ms)

    def observe(self, region: str, predicted_ms: float, observed_ms: float) -> None:
        if not (math.isfinite(predicted_ms) and math.isfinite(observed_ms)):
            return
        residual = observed_ms - (predicted_ms - self.correction_for(region))
        previous = self.correction_ms.get(region)
        value = residual if previous is None else previous + self.alpha * (residual - previous)
        self.correction_ms[region] = max(-self.limit_ms, min(self.limit_ms, value))


def scoring_from(settings: dict[str, Any]) -> tuple[PerfModel, ScoringPolicy]:
    """The perf model and policy named by a spec's `router.scoring` section (as a dict)."""
    perf = PerfModel(**{f.name: settings[f.name] for f in fields(PerfModel) if f.name in settings})
    policy = ScoringPolicy(**{f.name: settings[f.name] for f in fields(ScoringPolicy) if f.name in settings})
    return perf, policy
