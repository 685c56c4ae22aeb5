"""Reference placement policies for the spot simulator: all on-demand, one spot zone, round-robin.

They follow MaoZiming/spothedge_ae `policies/policies/on_demand.py` and
`policies/policies/round_robin.py` (static spot provisioning, no on-demand fallback):
hold the demand's replicas and replace what is lost. Each is called like `plan` (a
`PlacementPolicy`) for the simulator's one demand, places it in any zone the catalog
offers for its accelerator, and ignores the spec.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from capacity.catalog import Catalog, Offering
from capacity.model import CapacityEvent, EventKind, Market, Node, Placement
from capacity.policy.placement import Acquisition, Demand, PlacementDecision
from capacity.sim.unread_events import ReadMark, unread
from meridian_core.capacity_spec import CapacitySpec


def zones(catalog: Catalog, demand: Demand, market: Market) -> list[Offering]:
    """The offerings for the demand's accelerator priced in `market`, in catalog order."""
    offerings = catalog.offerings(accelerator=demand.accelerator, accelerator_count=demand.accelerator_count)
    return [o for o in offerings if o.price(market) is not None]


def usd_per_h(offering: Offering, market: Market) -> float:
    price = offering.price(market)
    assert price is not None
    return price.usd_per_h


def cheapest(catalog: Catalog, demand: Demand, market: Market) -> Offering:
    """The zone with the lowest `market` price now; ties go to the first in catalog order."""
    return min(zones(catalog, demand, market), key=lambda o: usd_per_h(o, market))


def all_on_demand(
    demands: Sequence[Demand],
    nodes: Sequence[Node],
    catalog: Catalog,
    spec: CapacitySpec,
    events: Iterable[CapacityEvent],
    now_s: float,
) -> PlacementDecision:
    """The demand's replicas on demand in the cheapest on-demand zone; never preempted."""
    (demand,) = demands
    placement = cheapest(catalog, demand, Market.ON_DEMAND).placement(Market.ON_DEMAND)
    missing = demand.replicas - len(nodes)
    return PlacementDecision(
        tuple(Acquisition(placement, "on_demand: cheapest on-demand zone", demand.home) for _ in range(missing))
    )


class NaiveSpot:
    """The demand's replicas on spot, all in one zone (the cheapest at the start); lost nodes are relaunched there."""

    def __init__(self) -> None:
        self.placement: Placement | None = None
        self.mark = ReadMark()

    def __call__(
        self,
        demands: Sequence[Demand],
        nodes: Sequence[Node],
        catalog: Catalog,
        spec: CapacitySpec,
        events: Iterable[CapacityEvent],
        now_s: float,
    ) -> PlacementDecision:
        (demand,) = demands
        fresh, self.mark = unread(events, self.mark)
        if self.placement is None:
            self.placement = cheapest(catalog, demand, Market.SPOT).placement(Market.SPOT)
        if any(e.kind is EventKind.STOCKOUT and e.placement == self.placement for e in fresh):
            return PlacementDecision()  # refused this step; try again at the next one
        missing = demand.replicas - len(nodes)
        return PlacementDecision(
            tuple(Acquisition(self.placement, "naive_spot: its one zone", demand.home) for _ in range(missing))
        )


class RoundRobin:
    """The demand's replicas on spot; each replacement goes to the next zone in turn (spothedge_ae round_robin.py)."""

    def __init__(self) -> None:
        self.next_zone = 0

    def __call__(
        self,
        demands: Sequence[Demand],
        nodes: Sequence[Node],
        catalog: Catalog,
        spec: CapacitySpec,
        events: Iterable[CapacityEvent],
        now_s: float,
    ) -> PlacementDecision:
        (demand,) = demands
        spot = zones(catalog, demand, Market.SPOT)
        acquisitions = []
        for _ in range(demand.replicas - len(nodes)):
            acquisitions.append(
                Acquisition(spot[self.next_zone].placement(Market.SPOT), "round_robin: next zone in turn", demand.home)
            )
            self.next_zone = (self.next_zone + 1) % len(spot)
        return PlacementDecision(tuple(acquisitions))
