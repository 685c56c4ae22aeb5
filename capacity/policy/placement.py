"""Where to buy and what to let go: Meridian's placement policy, pure.

`plan(...)` reads demand per region, the nodes held, the catalog, the capacity spec
(quotas, on-demand base, spot spare, fallbacks, backoff) and recent capacity events,
and returns acquisitions and releases, each with a placement and a reason. It has no
clock (the caller passes `now_s`) and does no I/O; the live controller and the spot
simulator (`capacity.sim.spot_replay`) call the same function.

Policy, per region demand of N replicas (one node each):

- **Market mix.** `on_demand_base` (at most N) nodes are on-demand whatever spot does;
  the other N - base are spot. With spot disabled, all N are on-demand.
- **Adaptive hedge.** Extra spot nodes are held only while the demand's zones misbehave:
  none after `hedge_calm_s` without a preemption there; otherwise as many as the most
  nodes lost within any `hedge_burst_s` of the remembered preemptions (zones failing
  together), at most `spot_spare`. Spares go where the spread puts any node: zones with
  fewest of ours, then fewest recent preemptions.
- **Spread.** Each new spot node goes to the usable zone holding fewest of the demand's
  spot nodes, then fewest recent preemptions, then the cheapest spot price.
- **Backoff.** A zone that stocked out, or preempted us, is skipped for
  `stockout_backoff_s`, doubled for each further such event within `event_memory_s` (up
  to `stockout_backoff_max_s`), then tried again. A quota refusal backs off the region.
- **On-demand fills the gap** that spot leaves: nodes spot could not be placed for
  (stockouts, backoff, quota) are bought on demand. A pending spot node counts as
  placed (the cloud granted it: stockouts are refused at launch), so no on-demand is
  bought for spot that is merely booting; an on-demand node, booting or running, is kept
  until ready spot covers it, so releasing it never opens a gap.
- **Fallback.** When the region has no zone left for a node (stocked out, backed off,
  or out of quota), it goes to the first acceptable `fallback` target that can take
  it; the decision lists a `RegionFallback` so the autoscaler can move traffic. Nodes in
  a fallback region that no local demand claims keep serving the demand that moved
  there. With `spread_regions`, fallback regions rank with the home region when
  spreading (for a service that does not care where replicas run).
- **Quotas** (accelerators per cloud, region and kind) count pending, running and
  draining nodes plus this decision's acquisitions.
- **Drain before release.** Releasing a running node sets `drain_first`: the executor
  stops routing to it and terminates it when its work is done. Pending nodes carry no
  traffic and are released directly. Draining nodes are left to the executor.
- **Preemption notice.** The node is released with `drain_first` at once and no longer
  counted, so its replacement is acquired in the same decision.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from capacity.catalog import Catalog, Offering
from capacity.model import CapacityEvent, EventKind, Market, Node, NodeState, Placement
from meridian_core.capacity_spec import CapacitySpec

ZONE_EVENTS = (EventKind.STOCKOUT, EventKind.PREEMPTED, EventKind.PREEMPTION_NOTICE)
PREEMPTIONS = (EventKind.PREEMPTED, EventKind.PREEMPTION_NOTICE)


@dataclass(frozen=True)
class Demand:
    """N replicas in one cloud region, each needing `accelerator_count` accelerators of one kind."""

    cloud: str
    region: str
    replicas: int
    accelerator: str
    accelerator_count: int = 1

    @property
    def home(self) -> tuple[str, str]:
        return (self.cloud, self.region)


@dataclass(frozen=True)
class Acquisition:
    placement: Placement
    reason: str
    demand: tuple[str, str]  # the (cloud, region) whose demand this node serves

    @property
    def is_fallback(self) -> bool:
        return (self.placement.cloud, self.placement.region) != self.demand


@dataclass(frozen=True)
class Release:
    node_id: str
    placement: Placement
    reason: str
    drain_first: bool  # stop routing to it and let its requests finish before terminating


@dataclass(frozen=True)
class RegionFallback:
    """Demand placed outside its region: the autoscaler should route that region's traffic there."""

    demand: tuple[str, str]
    to: tuple[str, str]
    nodes: int
    reason: str


@dataclass(frozen=True)
class Shortfall:
    """Replicas no acceptable region could take in this decision."""

    demand: tuple[str, str]
    nodes: int
    reason: str


@dataclass(frozen=True)
class PlacementDecision:
    acquisitions: tuple[Acquisition, ...] = ()
    releases: tuple[Release, ...] = ()
    fallbacks: tuple[RegionFallback, ...] = ()
    shortfalls: tuple[Shortfall, ...] = ()


@dataclass
class _Ledger:
    """What this decision has committed so far: quota use and nodes per zone."""

    quota_used: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    zone_count: Counter[tuple[str, str, str, Market]] = field(default_factory=Counter)


class PlacementPolicy(Protocol):
    """Anything called like `plan`: `plan` itself, and the peers the spot simulator compares it with."""

    def __call__(
        self,
        demands: Sequence[Demand],
        nodes: Sequence[Node],
        catalog: Catalog,
        spec: CapacitySpec,
        events: Iterable[CapacityEvent],
        now_s: float,
    ) -> PlacementDecision: ...


def plan(
    demands: Sequence[Demand],
    nodes: Sequence[Node],
    catalog: Catalog,
    spec: CapacitySpec,
    events: Iterable[CapacityEvent],
    now_s: float,
) -> PlacementDecision:
    """Decide acquisitions and releases for every demand; see the module docstring for the policy."""
    recent = [e for e in events if now_s - spec.event_memory_s <= e.at_s <= now_s]
    noticed = {e.node_id for e in recent if e.kind in PREEMPTIONS and e.node_id is not None}
    backoff = _Backoff(recent, spec, now_s)
    accelerators = {n.id: _accelerator_of(n, catalog) for n in nodes}

    ledger = _Ledger()
    for node in nodes:
        key = accelerators[node.id]
        if key is not None and node.state is not NodeState.TERMINATED:
            ledger.quota_used[(node.placement.cloud, node.placement.region, key[0])] += key[1]

    releases: list[Release] = []
    usable: list[Node] = []
    for node in nodes:
        if node.state in (NodeState.TERMINATED, NodeState.DRAINING):
            continue
        if node.id in noticed:
            if node.placement.market is Market.SPOT:
                releases.append(Release(node.id, node.placement, "preemption notice: drain now", drain_first=True))
            continue
        if accelerators[node.id] is not None:
            usable.append(node)

    claimed = _claim(demands, usable, accelerators, spec)
    lost = _preemption_times(recent)
    unclaimed = {n.id for n in usable} - {n.id for group in claimed.values() for n in group}
    for node in usable:
        if node.id in unclaimed:
            releases.append(_release(node, "no demand for it"))

    acquisitions: list[Acquisition] = []
    fallbacks: list[RegionFallback] = []
    shortfalls: list[Shortfall] = []
    for index, demand in enumerate(demands):
        spare = hedge(_lost_by(demand, lost, spec), spec, now_s)
        outcome = _plan_demand(demand, claimed[index], catalog, spec, backoff, ledger, spare)
        acquisitions.extend(outcome.acquisitions)
        releases.extend(outcome.releases)
        fallbacks.extend(outcome.fallbacks)
        shortfalls.extend(outcome.shortfalls)
    return PlacementDecision(tuple(acquisitions), tuple(releases), tuple(fallbacks), tuple(shortfalls))


def _preemption_times(recent: Sequence[CapacityEvent]) -> dict[tuple[str, str], list[float]]:
    """When each node was lost (its notice, else its preemption), per (cloud, region), oldest first."""
    first: dict[str | tuple[str, float], tuple[tuple[str, str], float]] = {}
    for event in recent:
        if event.kind in PREEMPTIONS:
            p = event.placement
            key = event.node_id if event.node_id is not None else (p.zone, event.at_s)
            if key not in first or event.at_s < first[key][1]:
                first[key] = ((p.cloud, p.region), event.at_s)
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for where, at_s in first.values():
        times[where].append(at_s)
    return {where: sorted(ts) for where, ts in times.items()}


def _lost_by(demand: Demand, lost: dict[tuple[str, str], list[float]], spec: CapacitySpec) -> list[float]:
    """Loss times in the regions this demand may hold nodes in, oldest first."""
    targets = _acceptable(demand, spec)
    return sorted(t for where, ts in lost.items() if any(_matches(x, *where) for x in targets) for t in ts)


def hedge(lost_s: Sequence[float], spec: CapacitySpec, now_s: float) -> int:
    """Spare spot nodes for a demand whose nodes were lost at `lost_s` (oldest first): none when
    the zones have been calm for `hedge_calm_s`, else the most lost within any `hedge_burst_s`."""
    if not lost_s or now_s - lost_s[-1] > spec.hedge_calm_s:
        return 0
    burst = max(bisect_right(lost_s, start + spec.hedge_burst_s) - i for i, start in enumerate(lost_s))
    return min(spec.spot_spare, burst)


def _accelerator_of(node: Node, catalog: Catalog) -> tuple[str, int] | None:
    offering = catalog.for_placement(node.placement)
    if offering is None or offering.accelerator is None:
        return None  # a type the catalog does not know: left alone rather than released blindly
    return (offering.accelerator.name.lower(), offering.accelerator.count)


def _acceptable(demand: Demand, spec: CapacitySpec) -> list[tuple[str, str | None]]:
    """The demand's own region, then its fallback targets in the spec's order."""
    targets: list[tuple[str, str | None]] = [demand.home]
    targets.extend((t.cloud, t.region) for t in spec.fallback if (t.cloud, t.region) != demand.home)
    return targets


def _matches(target: tuple[str, str | None], cloud: str, region: str) -> bool:
    return target[0] == cloud and (target[1] is None or target[1] == region)


def _claim(
    demands: Sequence[Demand],
    usable: Sequence[Node],
    accelerators: dict[str, tuple[str, int] | None],
    spec: CapacitySpec,
) -> dict[int, list[Node]]:
    """Nodes each demand counts as its own: its region's first, then unclaimed ones in its fallbacks."""
    claimed: dict[int, list[Node]] = {i: [] for i in range(len(demands))}
    taken: set[str] = set()
    homes = {(d.home, d.accelerator.lower(), d.accelerator_count) for d in demands}

    def kind(d: Demand) -> tuple[str, int]:
        return (d.accelerator.lower(), d.accelerator_count)

    for i, demand in enumerate(demands):
        for node in usable:
            if node.id not in taken and accelerators[node.id] == kind(demand):
                if (node.placement.cloud, node.placement.region) == demand.home:
                    claimed[i].append(node)
                    taken.add(node.id)
    for i, demand in enumerate(demands):
        for target in _acceptable(demand, spec)[1:]:
            for node in usable:
                where = (node.placement.cloud, node.placement.region)
                if node.id in taken or accelerators[node.id] != kind(demand) or not _matches(target, *where):
                    continue
                if (where, *kind(demand)) in homes:
                    continue  # that region's own demand owns it
                claimed[i].append(node)
                taken.add(node.id)
    return claimed


class _Backoff:
    """Zones (and regions, for quota refusals) to skip now, from recent events."""

    def __init__(self, recent: Sequence[CapacityEvent], spec: CapacitySpec, now_s: float) -> None:
        by_zone: dict[tuple[str, str, str, Market], list[float]] = defaultdict(list)
        by_region: dict[tuple[str, str, Market], list[float]] = defaultdict(list)
        self.preemptions: Counter[tuple[str, str, str]] = Counter()
        for event in recent:
            p = event.placement
            if event.kind in ZONE_EVENTS:
                by_zone[(p.cloud, p.region, p.zone, p.market)].append(event.at_s)
            if event.kind in PREEMPTIONS:
                self.preemptions[(p.cloud, p.region, p.zone)] += 1
            if event.kind is EventKind.QUOTA_EXCEEDED:
                by_region[(p.cloud, p.region, p.market)].append(event.at_s)
        self._zones = {key: _until(times, spec) for key, times in by_zone.items()}
        self._regions = {key: _until(times, spec) for key, times in by_region.items()}
        self._now = now_s

    def blocked(self, offering: Offering, market: Market) -> str | None:
        zone_until = self._zones.get((offering.cloud, offering.region, offering.zone, market), float("-inf"))
        if zone_until > self._now:
            return f"{offering.zone} backed off until t={zone_until:.0f}s after stockout/preemption"
        region_until = self._regions.get((offering.cloud, offering.region, market), float("-inf"))
        if region_until > self._now:
            return f"{offering.region} backed off until t={region_until:.0f}s after a quota refusal"
        return None


def _until(times: list[float], spec: CapacitySpec) -> float:
    """Exponential backoff: base × 2^(events - 1), capped, from the latest event."""
    backoff = min(spec.stockout_backoff_s * 2 ** (len(times) - 1), spec.stockout_backoff_max_s)
    return max(times) + backoff


@dataclass
class _Outcome:
    acquisitions: list[Acquisition] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    fallbacks: list[RegionFallback] = field(default_factory=list)
    shortfalls: list[Shortfall] = field(default_factory=list)


def _plan_demand(
    demand: Demand,
    held: list[Node],
    catalog: Catalog,
    spec: CapacitySpec,
    backoff: _Backoff,
    ledger: _Ledger,
    spare: int,
) -> _Outcome:
    outcome = _Outcome()
    n = demand.replicas
    base = min(spec.on_demand_base, n) if spec.spot_enabled else n
    spot_needed = n - base
    spot_target = spot_needed + spare if spot_needed else 0

    spot = [x for x in held if x.placement.market is Market.SPOT]
    on_demand = [x for x in held if x.placement.market is Market.ON_DEMAND]
    for node in held:
        ledger.zone_count[_zone_market(node.placement)] += 1
    ready_spot = sum(x.state is NodeState.RUNNING for x in spot)

    candidates = _offerings(demand, catalog, spec)
    placed_spot = len(spot)
    first_spot_shortfall = len(outcome.shortfalls)
    if spec.spot_enabled and spot_target > placed_spot:
        placed_spot += _acquire(
            demand, Market.SPOT, spot_target - placed_spot, candidates, spec, backoff, ledger, outcome
        )
    # Spot that could not be placed is not short yet: on-demand stands in for it below,
    # and only what that cannot place is. Why spot failed stays in that reason.
    spot_refusals = [short.reason for short in outcome.shortfalls[first_spot_shortfall:]]
    del outcome.shortfalls[first_spot_shortfall:]

    # On-demand: the base, plus the spot that could not be placed (stockouts, backoff, quota).
    # Booting spot counts (the cloud granted it); an on-demand node, booting or running, stays
    # until ready spot covers it: one bought at a preemption notice is ready before later spot.
    launch_target = base + min(spot_needed, max(0, spot_target - placed_spot))
    keep = base + min(spot_needed, max(0, spot_target - ready_spot))
    hold = max(launch_target, min(len(on_demand), keep))
    if len(on_demand) < launch_target:
        first = len(outcome.shortfalls)
        _acquire(demand, Market.ON_DEMAND, launch_target - len(on_demand), candidates, spec, backoff, ledger, outcome)
        for index in range(first, len(outcome.shortfalls)):
            short = outcome.shortfalls[index]
            outcome.shortfalls[index] = replace(short, reason="; ".join([*spot_refusals, short.reason]))
    surplus_reason = "ready spot covers demand" if ready_spot else "more on-demand nodes than demand"
    for node in _surplus(on_demand, len(on_demand) - hold, demand, ledger, catalog):
        outcome.releases.append(_release(node, f"on-demand no longer needed: {surplus_reason}"))
    for node in _surplus(spot, placed_spot - spot_target, demand, ledger, catalog):
        outcome.releases.append(_release(node, "spot beyond demand plus spare"))

    moved = Counter((a.placement.cloud, a.placement.region) for a in outcome.acquisitions if a.is_fallback)
    for where, count in sorted(moved.items()):
        reason = (
            f"{demand.cloud}/{demand.region} cannot hold the {demand.accelerator} demand "
            f"(stockouts, backoff or quota): {count} node(s) placed in {where[0]}/{where[1]}"
        )
        outcome.fallbacks.append(RegionFallback(demand.home, where, count, reason))
    return outcome


def _zone(p: Placement | Offering) -> tuple[str, str, str]:
    return (p.cloud, p.region, p.zone)


def _zone_market(p: Placement) -> tuple[str, str, str, Market]:
    return (p.cloud, p.region, p.zone, p.market)


def _offerings(demand: Demand, catalog: Catalog, spec: CapacitySpec) -> list[tuple[int, Offering]]:
    """(preference rank, offering) for every zone of every acceptable region, home region = rank 0."""
    ranked: list[tuple[int, Offering]] = []
    for rank, target in enumerate(_acceptable(demand, spec)):
        rank = 0 if spec.spread_regions else rank
        for offering in catalog.offerings(
            accelerator=demand.accelerator, accelerator_count=demand.accelerator_count, cloud=target[0]
        ):
            if target[1] is None or offering.region == target[1]:
                ranked.append((rank, offering))
    return ranked


def _pick(
    candidates: list[tuple[int, Offering]],
    widest: int,
    counts: Counter[tuple[str, str, str]],
    market: Market,
    demand: Demand,
    spec: CapacitySpec,
    backoff: _Backoff,
    quota: Counter[tuple[str, str, str]],
) -> Offering | None:
    """The usable offering (rank <= widest) in the zone holding fewest, then fewest preemptions, cheapest."""
    best: tuple[tuple[int, int, int, float, str], Offering] | None = None
    for rank, offering in candidates:
        if rank > widest or _refusal(offering, market, demand, spec, backoff, quota) is not None:
            continue
        where = _zone(offering)
        key = (counts[where], rank, backoff.preemptions[where], _usd(offering, market), offering.zone)
        if best is None or key < best[0]:
            best = (key, offering)
    return best[1] if best is not None else None


def _refusal(
    offering: Offering,
    market: Market,
    demand: Demand,
    spec: CapacitySpec,
    backoff: _Backoff,
    quota: Counter[tuple[str, str, str]],
) -> str | None:
    """Why this offering cannot take a node now, or None."""
    if offering.price(market) is None:
        return f"no {market} price for {offering.instance_type} in {offering.zone}"
    blocked = backoff.blocked(offering, market)
    if blocked is not None:
        return blocked
    limit = spec.quota(offering.cloud, offering.region, demand.accelerator)
    used = quota[_quota_key(offering, demand)]
    if limit is not None and used + demand.accelerator_count > limit:
        return f"quota {offering.cloud}/{offering.region}/{demand.accelerator}: {used} of {limit} in use"
    return None


def _usd(offering: Offering, market: Market) -> float:
    price = offering.price(market)
    assert price is not None
    return price.usd_per_h


def _quota_key(offering: Offering, demand: Demand) -> tuple[str, str, str]:
    return (offering.cloud, offering.region, demand.accelerator.lower())


def _commit(demand: Demand, offering: Offering, market: Market, ledger: _Ledger, outcome: _Outcome) -> None:
    ledger.zone_count[(offering.cloud, offering.region, offering.zone, market)] += 1
    ledger.quota_used[_quota_key(offering, demand)] += demand.accelerator_count
    if market is Market.SPOT:
        reason = f"spot: {offering.zone} holds fewest of this demand's spot nodes among usable zones"
    else:
        reason = f"on-demand in {offering.zone}: base, or the gap spot cannot fill"
    outcome.acquisitions.append(Acquisition(offering.placement(market), reason, demand.home))


def _acquire(
    demand: Demand,
    market: Market,
    count: int,
    candidates: list[tuple[int, Offering]],
    spec: CapacitySpec,
    backoff: _Backoff,
    ledger: _Ledger,
    outcome: _Outcome,
) -> int:
    """Up to `count` nodes, each in the most preferred region that can take it, in its zone holding
    fewest of ours (then fewest recent preemptions, then cheapest); returns how many were placed."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for (cloud, region, zone, held_market), k in ledger.zone_count.items():
        if held_market is market:
            counts[(cloud, region, zone)] += k
    widest = max((rank for rank, _ in candidates), default=0)
    for placed in range(count):
        choice = None
        for rank in range(widest + 1):
            choice = _pick(candidates, rank, counts, market, demand, spec, backoff, ledger.quota_used)
            if choice is not None:
                break
        if choice is None:
            refusals = {_refusal(o, market, demand, spec, backoff, ledger.quota_used) for _, o in candidates}
            why = "; ".join(sorted(r for r in refusals if r)) or "no offering for this accelerator anywhere acceptable"
            outcome.shortfalls.append(Shortfall(demand.home, count - placed, f"{market}: {why}"))
            return placed
        counts[_zone(choice)] += 1
        _commit(demand, choice, market, ledger, outcome)
    return count


def _surplus(nodes: list[Node], count: int, demand: Demand, ledger: _Ledger, catalog: Catalog) -> list[Node]:
    """The `count` nodes to let go: outside the home region first, pending before running,
    then from the most crowded zone, the dearest, the newest."""
    if count <= 0:
        return []

    def order(node: Node) -> tuple[bool, bool, int, float, float]:
        p = node.placement
        return (
            (p.cloud, p.region) == demand.home,
            node.state is NodeState.RUNNING,
            -ledger.zone_count[_zone_market(p)],
            -(catalog.price(p) or 0.0),
            -node.launched_at_s,
        )

    chosen = sorted(nodes, key=order)[:count]
    for node in chosen:
        ledger.zone_count[_zone_market(node.placement)] -= 1
    return chosen


def _release(node: Node, reason: str) -> Release:
    return Release(node.id, node.placement, reason, drain_first=node.state is NodeState.RUNNING)
