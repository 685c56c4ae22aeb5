"""The live capacity loop's logic with a provider double (the e2e autoscaling test runs
it against real Ray nodes): node demand, refusals kept in the ledger, drain-refused
releases moved to an idle node, and the report built from what the ledger holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from capacity.live.capacity_loop import CapacityLoop, node_demand
from capacity.live.ledger import Ledger, Snapshot
from capacity.live.local import local_catalog, placement_for
from capacity.live.report import report_rows
from capacity.model import CapacityError, CapacityEvent, EventKind, Market, Node, NodeBusy, NodeState, Placement
from meridian_core.capacity_spec import CapacitySpec, Quota
from meridian_core.contracts import ScalingView
from meridian_core.spec import PlatformSpec, parse_spec

SCALED = {"min_replicas": 0, "max_replicas": 4}
SPEC = {
    "models": [{"id": "m"}],
    "regions": [
        {"name": "local/us-east", "location": {"lat": 39.0, "lon": -77.5}, "autoscaling": SCALED},
        {"name": "local/eu-west", "location": {"lat": 53.3, "lon": -6.3}, "autoscaling": SCALED},
    ],
    "ray": {"cpus_per_region_node": 5},  # two replicas a node: engine + Serve actor each, one CPU spare
}


def view(target: int, recent_requests: int = 0, own_target: int | None = None) -> ScalingView:
    """A region policy's published decision, as the capacity loop reads it."""
    return ScalingView(
        target=target,
        own_target=target if own_target is None else own_target,
        reason="test",
        ready=0,
        starting=0,
        cold_start_s=90.0,
        cold_start_measured=False,
        min_replicas=0,
        max_replicas=4,
        recent_requests=recent_requests,
        at=0.0,
    )


class ProviderDouble:
    """Holds nodes in memory; `busy` nodes refuse release as Ray's drain would."""

    cloud = "local"

    def __init__(self, spec: PlatformSpec, refuse: set[str] = frozenset()):
        self.spec = spec
        self.held: dict[str, Node] = {}
        self.busy: set[str] = set()
        self.refuse = refuse
        self.pending_events: list[CapacityEvent] = []

    def acquire(self, placement: Placement, count: int = 1) -> list[Node]:
        if placement.region in self.refuse:
            raise CapacityError(CapacityEvent(EventKind.STOCKOUT, placement, 50.0, message="no port block"))
        node = Node(f"{placement.region}-{len(self.held) + 1}", placement, NodeState.RUNNING, 0.0)
        self.held[node.id] = node
        self.pending_events.append(CapacityEvent(EventKind.LAUNCHED, placement, 50.0, node.id))
        return [node]

    def release(self, node_id: str) -> None:
        if node_id in self.busy:
            raise NodeBusy(node_id)
        node = self.held.pop(node_id)
        self.pending_events.append(CapacityEvent(EventKind.TERMINATED, node.placement, 60.0, node_id))

    def nodes(self) -> list[Node]:
        return list(self.held.values())

    def events(self) -> list[CapacityEvent]:
        events, self.pending_events = self.pending_events, []
        return events


@pytest.fixture
def spec() -> PlatformSpec:
    return parse_spec(SPEC)


def loop_for(spec: PlatformSpec, provider: ProviderDouble, tmp_path: Path, targets: dict[str, int]) -> CapacityLoop:
    return CapacityLoop(
        spec,
        provider,
        Ledger(tmp_path),
        local_catalog(spec),
        scaling=lambda: {name: view(target) for name, target in targets.items()},
        publish_floors=lambda floors: None,
        clock=lambda: 100.0,
    )


def test_node_demand_fits_replicas_to_nodes_and_keeps_one_for_the_ingress(spec):
    demand = {d.region: d.replicas for d in node_demand(spec, {"local/us-east": 3, "local/eu-west": 0})}
    assert demand == {"local-us-east": 2, "local-eu-west": 1}  # two replicas a node; never no node


def test_a_published_target_is_never_taken_past_max_replicas(spec):
    demand = {d.region: d.replicas for d in node_demand(spec, {"local/us-east": 500, "local/eu-west": 1})}
    assert demand == {"local-us-east": 2, "local-eu-west": 1}  # 4 replicas at most: two nodes, not 250


def test_the_loop_buys_what_demand_needs_and_records_it(spec, tmp_path):
    provider = ProviderDouble(spec)
    loop = loop_for(spec, provider, tmp_path, {"local/us-east": 4, "local/eu-west": 1})
    loop.tick()
    assert sorted(n.placement.region for n in provider.nodes()) == ["local-eu-west", "local-us-east", "local-us-east"]
    ledger = Ledger(tmp_path)
    assert [e.kind for e in ledger.events()].count(EventKind.LAUNCHED) == 3
    snapshot = ledger.snapshot()
    assert len(snapshot.nodes) == 3 and snapshot.demand[("local", "local-us-east")] == 2


def test_a_refused_acquisition_is_kept_as_a_stockout(spec, tmp_path):
    provider = ProviderDouble(spec, refuse={"local-eu-west"})
    loop_for(spec, provider, tmp_path, {}).tick()
    stockouts = [e for e in Ledger(tmp_path).events() if e.kind is EventKind.STOCKOUT]
    assert [e.placement.region for e in stockouts] == ["local-eu-west"]


def test_a_release_refused_by_drain_falls_to_an_idle_node_of_the_same_kind(spec, tmp_path):
    provider = ProviderDouble(spec)
    targets = {"local/us-east": 4, "local/eu-west": 1}
    loop = loop_for(spec, provider, tmp_path, targets)
    loop.tick()
    provider.busy = {n.id for n in provider.nodes()}  # every node runs something...
    idle = next(n.id for n in provider.nodes() if n.placement.region == "local-us-east")
    provider.busy.discard(idle)  # ...but one us-east node
    targets["local/us-east"] = 1
    loop.tick()
    assert idle not in provider.held
    assert sum(n.placement.region == "local-us-east" for n in provider.nodes()) == 1
    provider.busy = {n.id for n in provider.nodes()}
    targets["local/eu-west"] = 0
    loop.tick()  # nothing to release: nothing changes, nothing fails
    assert len(provider.nodes()) == 2


def test_report_rows_sum_nodes_prices_events_and_quota(spec):
    catalog = local_catalog(spec)
    east = placement_for(spec, spec.regions[0])
    nodes = (Node("a", east, NodeState.RUNNING, 0.0), Node("b", east, NodeState.RUNNING, 0.0))
    events = [
        CapacityEvent(EventKind.STOCKOUT, east, 5_000.0),
        CapacityEvent(EventKind.PREEMPTED, east, 5_100.0, "c"),
        CapacityEvent(EventKind.STOCKOUT, east, 100.0),  # over an hour ago
    ]
    quotas = CapacitySpec(quotas=[Quota(cloud="local", region="local-us-east", accelerator="cpu", limit=5)])
    (row,) = report_rows(Snapshot(5_200.0, nodes, {("local", "local-us-east"): 1}), events, catalog, quotas, 5_200.0)
    assert row["nodes"] == {str(Market.ON_DEMAND): 2, str(Market.SPOT): 0}
    assert (row["gpus"], row["stockouts_1h"], row["preemptions_1h"]) == (2, 1, 1)
    assert row["utilisation"] == 0.5 and row["quota_headroom"] == 3
    assert row["usd_per_hour"] == 0.0 and row["projected_usd_per_day"] == 0.0


def test_demand_placement_cannot_place_becomes_a_floor_in_the_nearest_other_region():
    from capacity.live.capacity_loop import floors_for
    from capacity.policy.placement import PlacementDecision, Shortfall

    spec = parse_spec({**SPEC, "fleet": {"min_warm_replicas": 1}})
    scaling = {"local/us-east": view(4, recent_requests=90), "local/eu-west": view(0)}
    short = PlacementDecision(shortfalls=(Shortfall(("local", "local-us-east"), 1, "no port block"),))
    floors = floors_for(spec, scaling, short)
    assert floors["local/eu-west"].replicas == 2  # one node of two replicas moved over
    assert "local/us-east" in floors["local/eu-west"].reason
    assert floors_for(spec, scaling, PlacementDecision()) == {}  # us-east's 4 already keep the fleet warm
    idle = {"local/us-east": view(0, recent_requests=1), "local/eu-west": view(0, recent_requests=7)}
    assert floors_for(spec, idle, PlacementDecision())["local/eu-west"].replicas == 1


def test_demand_placement_moves_to_another_region_is_a_floor_there_not_a_node_bought_for_it(tmp_path):
    fallback = {"quotas": [{"cloud": "local", "region": "local-us-east", "accelerator": "cpu", "limit": 1}]}
    fallback["fallback"] = [{"cloud": "local", "region": "local-eu-west"}]
    spec = parse_spec({**SPEC, "capacity": fallback})
    published: list[dict] = []
    own = {"local/us-east": 4, "local/eu-west": 1}
    views = {name: view(target) for name, target in own.items()}
    loop = CapacityLoop(
        spec,
        provider := ProviderDouble(spec),
        Ledger(tmp_path),
        local_catalog(spec),
        scaling=lambda: views,
        publish_floors=published.append,
        clock=lambda: 100.0,
    )
    decision = loop.tick()
    assert [(f.demand[1], f.to[1], f.nodes) for f in decision.fallbacks] == [("local-us-east", "local-eu-west", 1)]
    # Only each region's own demand is bought: us-east's quota of one node, eu-west's one node.
    assert sorted(n.placement.region for n in provider.nodes()) == ["local-eu-west", "local-us-east"]
    floor = published[-1]["local/eu-west"]
    assert floor.replicas == 3 and "local/us-east" in floor.reason  # its own 1 plus the moved node's 2
    # The region runs its floor now; the next floor is planned from its own target, so it does not grow.
    views["local/eu-west"] = view(3, own_target=1)
    loop.tick()
    assert published[-1]["local/eu-west"].replicas == 3
    assert sorted(n.placement.region for n in provider.nodes()).count("local-eu-west") == 2  # bought as its own
