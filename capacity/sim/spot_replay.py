"""Replay spot availability traces under capacity policies: availability, cost, preemptions.

The model (every policy gets the same one):

- **Time** advances in the trace's steps (`gap_s`); policies act at each step boundary and
  at the moment a warned node is taken.
- **Capacity.** A zone's trace value is the number of spot nodes obtainable there at that
  step (`UNLIMITED` for "available" in a 0/1 set). When it drops below the spot nodes we
  hold in the zone, the newest are preempted. **Notices**: the cloud warns `notice_s[cloud]`
  seconds ahead (AWS 120 s, GCP 30 s by default; 0 = none). The traces only sample
  availability every `gap_s`, so when the warning came is not in them: the simulator takes
  the first sample showing the loss as the notice time and ends the node `notice_s` later.
  A warned node is passed to the policy as DRAINING with a PREEMPTION_NOTICE event (as the
  live AWS provider reports it), keeps serving until it ends, then a PREEMPTED event follows.
  With no notice the node ends at the sample, as before. A spot launch
  into a zone already at its value fails at once: a stockout the policy sees, and it may
  try elsewhere in the same step (up to `max_rounds` calls a step). On-demand launches
  always succeed.
- **Provisioning.** A node serves `spot_delay_s` / `on_demand_delay_s` after its launch.
- **Release.** A running node a policy releases stops serving at once and is billed for
  `drain_s` more (the time to finish its requests); a provisioning node is billed to the
  release time.
- **Cost** accrues from launch to end for every node at its zone's price; spot prices may
  change per step (trace `prices`).
- **Availability** is the fraction of time from `max(spot_delay_s, on_demand_delay_s)`
  to the end of the trace (the first bring-up excluded, as in SpotHedge's `score_plan`)
  with at least `target` nodes serving.

Every policy is called like `plan` (a `PlacementPolicy`; Meridian's is `plan` itself), and
the simulator alone translates the trace into plan's arguments: one `Demand` of `target`
replicas, homed in the set's region with the most zones (ties: cheapest on-demand, then
name), and, when the spec names no fallback, the set's other regions as fallbacks, spread
over; the nodes held, as `Node`s, PENDING until ready; a `Catalog` of the set's zones whose
spot prices are refreshed per step by `SpotQuote`s; and the stockouts, notices and preemptions of
the last `spec.event_memory_s`. The decision's releases are applied, then its acquisitions.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from capacity.catalog import Catalog, Offering, Price, SpotQuote
from capacity.model import CapacityEvent, EventKind, Market, Node, NodeState, Placement
from capacity.policy.placement import Demand, PlacementPolicy, plan
from capacity.sim.peer_placements import NaiveSpot, RoundRobin, all_on_demand
from capacity.sim.spot_traces import TraceSet
from capacity.sim.spothedge import SpotHedge
from capacity.sim.trace_prices import ZonePrices
from meridian_core.capacity_spec import CapacitySpec, FallbackTarget

POLICIES = ("on_demand", "naive_spot", "round_robin", "spothedge", "meridian")
PREEMPTION_NOTICE_S = {"aws": 120.0, "gcp": 30.0}


@dataclass(frozen=True)
class SpotReplayConfig:
    target: int
    spot_delay_s: float = 120.0
    on_demand_delay_s: float = 120.0
    drain_s: float = 30.0
    spothedge_overprovision: int = 1
    max_rounds: int | None = None  # policy calls per step; default: one per zone, plus one
    # Seconds of warning before a spot preemption, per cloud (AWS's two-minute interruption
    # notice; GCP's 30 s preemption notice); a cloud not named gets none.
    notice_s: Mapping[str, float] = field(default_factory=lambda: dict(PREEMPTION_NOTICE_S))

    def notice_for(self, cloud: str) -> float:
        return float(self.notice_s.get(cloud, 0.0))


@dataclass(frozen=True)
class SpotReplayResult:
    policy: str
    availability: float
    cost_usd: float
    savings_vs_ondemand: float
    preemptions: int
    stockouts: int
    spot_node_hours: float
    on_demand_node_hours: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def make_policy(name: str, config: SpotReplayConfig) -> PlacementPolicy:
    if name == "on_demand":
        return all_on_demand
    if name == "naive_spot":
        return NaiveSpot()
    if name == "round_robin":
        return RoundRobin()
    if name == "spothedge":
        return SpotHedge(config.spothedge_overprovision)
    if name == "meridian":
        return plan
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")


@dataclass(frozen=True)
class _Held:
    """A node the policy holds: its zone (index into the set), when it was launched and when it serves."""

    id: str
    zone: int
    placement: Placement
    launched_s: float
    ready_s: float
    ends_s: float = math.inf  # when a warned node is taken

    @property
    def market(self) -> Market:
        return self.placement.market

    @property
    def warned(self) -> bool:
        return self.ends_s < math.inf

    def node(self, now_s: float) -> Node:
        if self.warned:
            state = NodeState.DRAINING
        else:
            state = NodeState.RUNNING if self.ready_s <= now_s else NodeState.PENDING
        return Node(self.id, self.placement, state, self.launched_s)


class _Bill:
    """Integral of each zone's price over time, for O(1) node costs with per-step spot prices."""

    def __init__(self, prices: ZonePrices, gap_s: float) -> None:
        self.gap = gap_s
        self.spot = prices.spot
        self.on_demand = prices.on_demand
        steps = prices.spot.shape[1]
        self.cumulative = np.zeros((prices.spot.shape[0], steps + 1))
        self.cumulative[:, 1:] = np.cumsum(prices.spot * gap_s, axis=1)
        self.end = steps * gap_s

    def _integral(self, zone: int, t: float) -> float:
        t = min(max(t, 0.0), self.end)
        step = min(int(t // self.gap), self.spot.shape[1] - 1)
        return float(self.cumulative[zone, step] + self.spot[zone, step] * (t - step * self.gap))

    def cost(self, node: _Held, until_s: float) -> float:
        until_s = min(until_s, self.end)
        if node.market is Market.ON_DEMAND:
            return float(self.on_demand[node.zone]) * max(0.0, until_s - node.launched_s) / 3600
        return (self._integral(node.zone, until_s) - self._integral(node.zone, node.launched_s)) / 3600


def _catalog(traces: TraceSet, prices: ZonePrices) -> Catalog:
    """The set's zones, in the set's order, at their on-demand prices and the first step's spot prices."""
    return Catalog(
        Offering(
            z.cloud,
            z.region,
            z.zone,
            prices.instance_type,
            prices.accelerator,
            0.0,
            0.0,
            Price(float(prices.on_demand[i]), None, "trace set"),
            Price(float(prices.spot[i, 0]), 0.0, "trace set"),
        )
        for i, z in enumerate(traces.zones)
    )


def _demand(traces: TraceSet, prices: ZonePrices, target: int, spec: CapacitySpec) -> tuple[Demand, CapacitySpec]:
    """The demand, homed in the set's region with most zones (ties: cheapest on-demand, then name), and the
    spec, given the set's other regions as fallbacks to spread over when it names none."""
    zones = Counter((z.cloud, z.region) for z in traces.zones)
    cheapest = {
        key: min(float(prices.on_demand[i]) for i, z in enumerate(traces.zones) if (z.cloud, z.region) == key)
        for key in zones
    }
    regions = sorted(zones, key=lambda key: (-zones[key], cheapest[key], key))
    cloud, region = regions[0]
    if not spec.fallback:
        fallback = [FallbackTarget(cloud=c, region=r) for c, r in regions[1:]]
        spec = spec.model_copy(update={"fallback": fallback, "spread_regions": True})
    return Demand(cloud, region, target, prices.accelerator.name, prices.accelerator.count), spec


def simulate(
    traces: TraceSet,
    prices: ZonePrices,
    name: str,
    policy: PlacementPolicy,
    config: SpotReplayConfig,
    spec: CapacitySpec,
) -> SpotReplayResult:
    """Replay one policy over the whole set; `savings_vs_ondemand` is left NaN (see `compare`)."""
    gap = traces.gap_s
    zones = traces.zones
    capacity = np.stack([z.capacity for z in zones], axis=1).tolist()  # [step][zone]
    spot_prices = prices.spot.T.tolist()
    bill = _Bill(prices, gap)
    rounds = config.max_rounds or len(zones) + 1
    warmup = max(config.spot_delay_s, config.on_demand_delay_s)
    end = traces.steps * gap
    catalog = _catalog(traces, prices)
    demand, spec = _demand(traces, prices, config.target, spec)
    zone_index = {z.zone: i for i, z in enumerate(zones)}

    held: dict[str, _Held] = {}
    events: deque[CapacityEvent] = deque()  # the last spec.event_memory_s, oldest first
    cost = spot_hours = od_hours = available = 0.0
    preemptions = stockouts = 0
    next_id = 0

    def finish(node: _Held, until_s: float) -> None:
        nonlocal cost, spot_hours, od_hours
        until_s = min(until_s, end)
        cost += bill.cost(node, until_s)
        hours = max(0.0, until_s - node.launched_s) / 3600
        if node.market is Market.SPOT:
            spot_hours += hours
        else:
            od_hours += hours

    def end_warned(at_s: float) -> None:
        for node in [n for n in held.values() if n.ends_s <= at_s]:
            del held[node.id]
            finish(node, node.ends_s)
            events.append(CapacityEvent(EventKind.PREEMPTED, node.placement, node.ends_s, node.id))

    def act(at_s: float, cap: list[int], spot_in: list[int]) -> None:
        nonlocal stockouts, next_id
        for _ in range(rounds):
            nodes = [n.node(at_s) for n in held.values()]
            decision = policy([demand], nodes, catalog, spec, tuple(events), at_s)
            for release in decision.releases:
                node = held.pop(release.node_id)
                serving = node.ready_s <= at_s
                finish(node, min(node.ends_s, at_s + (config.drain_s if release.drain_first and serving else 0.0)))
                if node.market is Market.SPOT and not node.warned:
                    spot_in[node.zone] -= 1
            refused = False
            for acquisition in decision.acquisitions:
                placement = acquisition.placement
                zone = zone_index[placement.zone]
                if placement.market is Market.SPOT:
                    if spot_in[zone] >= cap[zone]:
                        refused = True
                        stockouts += 1
                        events.append(CapacityEvent(EventKind.STOCKOUT, placement, at_s))
                        continue
                    spot_in[zone] += 1
                    delay = config.spot_delay_s
                else:
                    delay = config.on_demand_delay_s
                node_id = f"n{next_id}"
                next_id += 1
                held[node_id] = _Held(node_id, zone, placement, at_s, at_s + delay)
            if not refused:
                break

    def cover(lo: float, hi: float) -> None:
        nonlocal available
        lo = max(lo, warmup)
        if hi > lo:
            available += _covered(held.values(), config.target, lo, hi)

    for step in range(traces.steps):
        now = step * gap
        cap = capacity[step]
        if step:
            catalog.apply_spot_quotes(
                SpotQuote(z.cloud, z.region, z.zone, prices.instance_type, spot_prices[step][i], now)
                for i, z in enumerate(zones)
                if spot_prices[step][i] != spot_prices[step - 1][i]
            )
        while events and events[0].at_s < now - spec.event_memory_s:
            events.popleft()
        end_warned(now)
        spot_in = [0] * len(zones)
        for node in held.values():
            if node.market is Market.SPOT and not node.warned:
                spot_in[node.zone] += 1
        for zone, count in enumerate(spot_in):
            if count > cap[zone]:
                victims = sorted(
                    (n for n in held.values() if n.market is Market.SPOT and n.zone == zone and not n.warned),
                    key=lambda n: -n.launched_s,
                )[: count - cap[zone]]
                notice = config.notice_for(zones[zone].cloud)
                for node in victims:
                    if notice > 0:
                        held[node.id] = replace(node, ends_s=now + notice)
                        events.append(CapacityEvent(EventKind.PREEMPTION_NOTICE, node.placement, now, node.id))
                    else:
                        del held[node.id]
                        finish(node, now)
                        events.append(CapacityEvent(EventKind.PREEMPTED, node.placement, now, node.id))
                preemptions += len(victims)
                spot_in[zone] = cap[zone]
        act(now, cap, spot_in)
        # A warned node taken inside the step reaches every policy then, as the live loop hears
        # of it, not at the next sample: a policy acting on losses alone is not charged the gap.
        at = now
        while (taken := min((n.ends_s for n in held.values() if at < n.ends_s < now + gap), default=None)) is not None:
            cover(at, taken)
            at = taken
            end_warned(at)
            act(at, cap, spot_in)
        cover(at, now + gap)

    for node in held.values():
        finish(node, end)
    measured = end - warmup
    availability = available / measured if measured > 0 else 1.0
    return SpotReplayResult(name, availability, cost, math.nan, preemptions, stockouts, spot_hours, od_hours)


def _covered(nodes: Iterable[_Held], target: int, lo: float, hi: float) -> float:
    """Seconds of [lo, hi) with at least `target` nodes serving; a node serves from ready until it ends."""
    if target <= 0:
        return hi - lo
    spans = [(max(lo, n.ready_s), min(hi, n.ends_s)) for n in nodes]
    changes = sorted([(a, 1) for a, b in spans if a < b] + [(b, -1) for a, b in spans if a < b])
    covered, serving, since = 0.0, 0, lo
    for at, delta in changes:
        if serving >= target:
            covered += at - since
        serving += delta
        since = at
    return covered


def compare(
    traces: TraceSet,
    prices: ZonePrices,
    config: SpotReplayConfig,
    spec: CapacitySpec,
    policies: Sequence[str] = POLICIES,
    on_done: Callable[[SpotReplayResult], None] | None = None,
) -> list[SpotReplayResult]:
    """Run each policy; savings are against the all-on-demand policy, which is always run."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; choose from {', '.join(POLICIES)}")
    names = list(dict.fromkeys(["on_demand", *policies]))
    raw: dict[str, SpotReplayResult] = {}
    for name in names:
        raw[name] = simulate(traces, prices, name, make_policy(name, config), config, spec)
        if on_done is not None:
            on_done(raw[name])
    baseline = raw["on_demand"].cost_usd
    results = []
    for name in dict.fromkeys(policies):
        r = raw[name]
        savings = 1.0 - r.cost_usd / baseline if baseline > 0 else 0.0
        results.append(
            SpotReplayResult(
                r.policy,
                r.availability,
                r.cost_usd,
                savings,
                r.preemptions,
                r.stockouts,
                r.spot_node_hours,
                r.on_demand_node_hours,
            )
        )
    return results
