"""Reference capacity policies for the spot simulator: all on-demand, one spot zone, round-robin.

They follow MaoZiming/spothedge_ae `policies/policies/on_demand.py` and
`policies/policies/round_robin.py` (static spot provisioning, no on-demand fallback):
hold `target` nodes and replace what is lost.
"""

from __future__ import annotations

from capacity.model import EventKind, Market
from capacity.sim.sim_types import Launch, SimActions, SimView


class AllOnDemand:
    """`target` on-demand nodes in the cheapest on-demand zone; never preempted."""

    name = "on_demand"

    def step(self, view: SimView) -> SimActions:
        missing = view.target - len(view.nodes)
        zone = min(range(len(view.zones)), key=lambda z: (view.on_demand_usd_per_h[z], z))
        return SimActions(launches=tuple(Launch(zone, Market.ON_DEMAND) for _ in range(missing)))


class NaiveSpot:
    """`target` spot nodes, all in one zone (the cheapest at the start); lost nodes are relaunched there."""

    name = "naive_spot"

    def __init__(self) -> None:
        self.zone: int | None = None

    def step(self, view: SimView) -> SimActions:
        if self.zone is None:
            self.zone = min(range(len(view.zones)), key=lambda z: (view.spot_usd_per_h[z], z))
        if any(e.placement.zone == view.zones[self.zone].zone for e in view.events if e.kind is EventKind.STOCKOUT):
            return SimActions()  # refused this step; try again at the next one
        missing = view.target - len(view.nodes)
        return SimActions(launches=tuple(Launch(self.zone, Market.SPOT) for _ in range(missing)))


class RoundRobin:
    """`target` spot nodes; each replacement goes to the next zone in turn (spothedge_ae round_robin.py)."""

    name = "round_robin"

    def __init__(self) -> None:
        self.next_zone = 0

    def step(self, view: SimView) -> SimActions:
        launches = []
        for _ in range(view.target - len(view.nodes)):
            launches.append(Launch(self.next_zone, Market.SPOT))
            self.next_zone = (self.next_zone + 1) % len(view.zones)
        return SimActions(launches=tuple(launches))
