"""Which region answers a request soonest: an estimate of time to first token,

    TTFT ≈ network RTT + queueing delay + prefill time,

per region, and a choice among them that keeps shared prefixes and sessions where
they already are and does not flap. Pure: plain data in, a decision out; the live
router and the simulator call the same functions.

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

import math
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from meridian_core.geo import LatLon, haversine_km
from meridian_core.replica_model import ReplicaProfile
from meridian_core.rtt import prior_rtt_ms
from meridian_core.spec import ScoringSpec


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
    home_rtt_ms: float = 0.0  # the nearest region's, which a spill's extra RTT is counted from
    # The extra RTT the answer may add on the mean: `mean_rtt_budget` of the nearest region's.
    rtt_allowance_ms: float = 0.0

    def extra_rtt_ms(self, region: str) -> float:
        """The RTT answering from `region` adds over the nearest region's."""
        rtt = next((e.rtt_ms for e in self.estimates if e.region == region), self.home_rtt_ms)
        return max(0.0, rtt - self.home_rtt_ms)


def estimate(
    region: RegionLoad, request: RequestFacts, cached_tokens: int, profile: ReplicaProfile, scoring: ScoringSpec
) -> Estimate:
    rtt = max(0.0, prior_rtt_ms(haversine_km(request.client, region.location)) + region.rtt_correction_ms)
    replicas = max(1, region.ready_replicas)
    # Polled counts lag by a poll interval; the router's own count is current. Whichever
    # says more is outstanding is nearer the truth; what is not running waits.
    outstanding = max(region.running + region.waiting, region.in_flight)
    running = region.running / replicas
    waiting = max(0, outstanding - region.running) / replicas
    prefill_ahead_s = waiting * profile.prefill_s(scoring.typical_prompt_tokens, running)
    typical_tokens = scoring.typical_prompt_tokens + scoring.typical_output_tokens
    slots = max(1, min(profile.max_num_seqs, profile.kv_capacity_tokens // typical_tokens))
    beyond_slots = max(0.0, running + waiting + 1 - slots)
    slot_wait_s = beyond_slots * scoring.typical_output_tokens * profile.decode_step_s(slots) / slots
    queue = 1000.0 * max(prefill_ahead_s, slot_wait_s)
    if region.cold:
        queue += region.cold_start_ms
    # A nearly full KV cache means preemption and recomputation.
    pressure = 1.0 / max(0.05, 1.0 - region.kv_cache_usage) if region.kv_cache_usage > 0.9 else 1.0
    uncached = max(0, request.prompt_tokens - cached_tokens)
    prefill = 1000.0 * profile.prefill_s(uncached, running) * pressure
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


class SpillPrice:
    """A markup on `spill_rtt_factor`, kept so that the mean RTT of the answers stays within
    the spec's `mean_rtt_budget` of the nearest regions' mean RTT.

    The markup is the price of the budget's constraint, found as a Lagrange multiplier is:
    each answer moves its logarithm by `step` times what it spent over its allowance (the
    budget's share of its nearest region's RTT), in units of the recent mean allowance, so
    it stops moving where spills spend the allowance on average. It never falls below 1,
    and one answer moves it by a factor of at most e^`max_move`. Spills then go where they
    buy the most TTFT per millisecond of RTT, whatever the load and the fleet's geography."""

    def __init__(self, window: int = 200, step: float = 0.02, max_move: float = 0.5, ceiling: float = 1024.0):
        self.markup = 1.0
        self._window, self._step, self._max_move, self._ceiling = window, step, max_move, ceiling
        self._allowance_ms = 0.0  # a running mean over about `window` answers

    def observe(self, extra_ms: float, allowance_ms: float) -> None:
        self._allowance_ms += (allowance_ms - self._allowance_ms) / self._window
        overspent = (extra_ms - allowance_ms) / max(1.0, self._allowance_ms)
        move = max(-self._max_move, min(self._max_move, self._step * overspent))
        self.markup = max(1.0, min(self._ceiling, self.markup * math.exp(move)))


class RoutingMemory:
    """What the scorer remembers between requests: prefixes, sessions, last choices, and
    the price of spilling."""

    def __init__(self, capacity: int = 100_000):
        self.prefixes = PrefixIndex(capacity)
        self.sessions = LruMap(capacity)
        self.last_choice = LruMap(capacity)
        self.spill_price = SpillPrice()

    def remember(self, region: str, request: RequestFacts, decision: RouteDecision) -> None:
        """`region` answered `request`, routed by `decision`."""
        self.spill_price.observe(decision.extra_rtt_ms(region), decision.rtt_allowance_ms)
        self.prefixes.record(region, request.prefix_blocks)
        if request.session is not None:
            self.sessions.put(request.session, region)
        if request.cell is not None:
            self.last_choice.put(request.cell, region)


def choose(
    regions: Sequence[RegionLoad],
    request: RequestFacts,
    memory: RoutingMemory,
    profiles: Mapping[str, ReplicaProfile],
    scoring: ScoringSpec,
) -> RouteDecision | None:
    """Rank the regions (all able to serve) for `request`; None if there are none.
    `profiles` holds each region's replica profile by region name.

    A cold region (no ready replica yet) is held for when the estimate says waiting for
    its start is sooner than going elsewhere ("hold"); when the nearest region is cold
    and another wins, the request spills ("spill").
    """
    if not regions:
        return None
    nearest = min(regions, key=lambda r: (haversine_km(request.client, r.location), r.name)).name
    # Cold regions slower to start than a request may wait go last, unless all are.
    too_cold = {r.name for r in regions if r.cold and r.cold_start_ms > scoring.max_hold_ms}
    if len(too_cold) == len(regions):
        too_cold = set()
    estimates = {
        r.name: estimate(
            r,
            request,
            memory.prefixes.cached_blocks(r.name, request.prefix_blocks) * request.tokens_per_block,
            profiles[r.name],
            scoring,
        )
        for r in regions
    }
    previous = memory.last_choice.get(request.cell) if request.cell is not None else None

    home_rtt = estimates[nearest].rtt_ms

    def ttft(name: str) -> float:
        return estimates[name].ttft_ms - (scoring.hysteresis_ms if name == previous else 0.0)

    # Leaving the nearest region costs its extra RTT this many times over: `spill_rtt_factor`,
    # marked up while spills run over the mean RTT budget.
    factor = scoring.spill_rtt_factor * memory.spill_price.markup

    def cost(name: str) -> float:
        """TTFT, with the RTT added by leaving the nearest region counted `factor` times."""
        return ttft(name) + (factor - 1.0) * max(0.0, estimates[name].rtt_ms - home_rtt)

    order = sorted((name for name in estimates if name not in too_cold), key=lambda name: (cost(name), name))
    best = order[0]
    reason = "nearest" if best == nearest else "load"
    sticky = _sticky_region(request, memory, {n: e for n, e in estimates.items() if n not in too_cold})
    # A session stays where it is while its TTFT is within the margin of the best's; a cached
    # prefix pulls only within the margin of the best's cost, so it does not drag a request away
    # from its nearest region that the spill price would keep home.
    held = ttft if sticky is not None and sticky[1] == "session" else cost
    if sticky is not None and sticky[0] != best and held(sticky[0]) <= held(best) + scoring.affinity_margin_ms:
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
    return RouteDecision(
        tuple(order),
        reason,
        tuple(estimates[name] for name in order),
        home_rtt,
        scoring.mean_rtt_budget * home_rtt,
    )


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
    """Per region, a smoothed (observed time to first byte − predicted TTFT).

    The distance prior knows nothing of a region's real network path or of engine speed;
    the residual the router observes on answered requests corrects both. One
    observation moves a correction by at most `max_step_ms` (a slow client or one odd
    request cannot swing it), and a correction fades with `half_life_s` once no traffic
    confirms it (a region traffic avoids is not held to an old reading).
    """

    def __init__(
        self, alpha: float = 0.2, limit_ms: float = 5_000.0, max_step_ms: float = 100.0, half_life_s: float = 300.0
    ):
        self.alpha = alpha
        self.limit_ms = limit_ms
        self.max_step_ms = max_step_ms
        self.half_life_s = half_life_s
        self._learned: dict[str, tuple[float, float]] = {}  # region -> (correction ms, when learned)

    def _decayed(self, region: str, now: float) -> float:
        value, at = self._learned[region]
        return value * 0.5 ** (max(0.0, now - at) / self.half_life_s)

    def correction_for(self, region: str, now: float) -> float:
        """The region's learned correction; before any evidence, the fleet's average.

        Much of a residual is model error common to every region (engine speed, prompt
        size); a region not yet observed must not look faster just for that.
        """
        if region in self._learned:
            return self._decayed(region, now)
        if not self._learned:
            return 0.0
        return sum(self._decayed(other, now) for other in self._learned) / len(self._learned)

    def observe(self, region: str, predicted_ms: float, observed_ms: float, now: float) -> None:
        """`predicted_ms` includes the correction the request was routed with."""
        if not (math.isfinite(predicted_ms) and math.isfinite(observed_ms)):
            return
        current = self.correction_for(region, now)
        residual = observed_ms - (predicted_ms - current)
        step = max(-self.max_step_ms, min(self.max_step_ms, self.alpha * (residual - current)))
        self._learned[region] = (max(-self.limit_ms, min(self.limit_ms, current + step)), now)
