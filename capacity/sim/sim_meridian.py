"""Meridian's placement policy (`capacity.policy.placement.plan`, the live code) driven by the spot simulator.

The adapter only translates: simulated nodes become `Node`s (PENDING until ready), the
trace zones become a `Catalog` whose spot prices are refreshed each step through
`Catalog.apply_spot_quotes`, and the simulator's stockouts and preemptions are kept as
`CapacityEvent`s for `spec.event_memory_s`. The demand is homed in the set's region with
the most zones (ties: cheapest on-demand, then name); when the spec names no fallback,
the set's other regions are the fallback, in the same order.
"""

from __future__ import annotations

from collections import Counter

from capacity.catalog import Catalog, Offering, Price, SpotQuote
from capacity.model import Accelerator, CapacityEvent, Node, NodeState, Placement
from capacity.policy.placement import Demand, plan
from capacity.sim.sim_types import Launch, SimActions, SimView, Terminate
from meridian_core.capacity_spec import CapacitySpec, FallbackTarget


class MeridianPolicy:
    name = "meridian"

    def __init__(self, instance_type: str, accelerator: Accelerator, spec: CapacitySpec) -> None:
        self.instance_type = instance_type
        self.accelerator = accelerator
        self.spec = spec
        self.catalog: Catalog | None = None
        self.events: list[CapacityEvent] = []
        self.quoted: list[float] = []

    def _setup(self, view: SimView) -> None:
        self.catalog = Catalog(
            Offering(
                z.cloud,
                z.region,
                z.zone,
                self.instance_type,
                self.accelerator,
                0.0,
                0.0,
                Price(view.on_demand_usd_per_h[i], None, "trace set"),
                Price(view.spot_usd_per_h[i], view.now_s, "trace set"),
            )
            for i, z in enumerate(view.zones)
        )
        self.quoted = list(view.spot_usd_per_h)
        zones = Counter((z.cloud, z.region) for z in view.zones)
        cheapest = {
            key: min(view.on_demand_usd_per_h[i] for i, z in enumerate(view.zones) if (z.cloud, z.region) == key)
            for key in zones
        }
        regions = sorted(zones, key=lambda key: (-zones[key], cheapest[key], key))
        self.home = regions[0]
        if not self.spec.fallback:
            fallback = [FallbackTarget(cloud=c, region=r) for c, r in regions[1:]]
            self.spec = self.spec.model_copy(update={"fallback": fallback, "spread_regions": True})

    def _refresh_prices(self, view: SimView) -> None:
        assert self.catalog is not None
        quotes = [
            SpotQuote(z.cloud, z.region, z.zone, self.instance_type, view.spot_usd_per_h[i], view.now_s)
            for i, z in enumerate(view.zones)
            if view.spot_usd_per_h[i] != self.quoted[i]
        ]
        if quotes:
            self.catalog.apply_spot_quotes(quotes)
            self.quoted = list(view.spot_usd_per_h)

    def step(self, view: SimView) -> SimActions:
        if self.catalog is None:
            self._setup(view)
        self._refresh_prices(view)
        assert self.catalog is not None
        horizon = view.now_s - self.spec.event_memory_s
        self.events = [e for e in self.events if e.at_s >= horizon]
        self.events.extend(view.events)

        nodes = [
            Node(
                n.id,
                Placement(
                    view.zones[n.zone].cloud,
                    view.zones[n.zone].region,
                    view.zones[n.zone].zone,
                    self.instance_type,
                    n.market,
                ),
                NodeState.RUNNING if view.ready(n) else NodeState.PENDING,
                n.launched_s,
            )
            for n in view.nodes
        ]
        demand = Demand(self.home[0], self.home[1], view.target, self.accelerator.name, self.accelerator.count)
        decision = plan([demand], nodes, self.catalog, self.spec, self.events, view.now_s)
        index = {z.zone: i for i, z in enumerate(view.zones)}
        launches = tuple(Launch(index[a.placement.zone], a.placement.market) for a in decision.acquisitions)
        terminations = tuple(Terminate(r.node_id, drain=r.drain_first) for r in decision.releases)
        return SimActions(launches, terminations)
