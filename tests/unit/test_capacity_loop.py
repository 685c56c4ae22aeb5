"""A region's live capacity loop with a provider double (the e2e autoscaling test runs
it against real Ray nodes): node demand, refusals kept in the ledger, drain-refused
releases moved to an idle node, what it cannot place reported for the global loop, and
the capacity report built from what the ledgers hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capacity.catalog import Catalog, Offering, Price, SpotQuote
from capacity.live.capacity_loop import PRICE_REFRESH_S, CapacityLoop, JoinWatch, node_demand, wanted_replicas
from capacity.live.ledger import Ledger, Snapshot, fleet_ledger
from capacity.live.local import local_catalog, placement_for
from capacity.live.report import report_rows
from capacity.model import (
    Accelerator,
    CapacityError,
    CapacityEvent,
    EventKind,
    Market,
    Node,
    NodeBusy,
    NodeState,
    Placement,
    ProviderError,
)
from meridian_core.capacity_spec import CapacitySpec, Quota
from meridian_core.contracts import CapacityReport, ScalingView
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
        self.acquired: list[Placement] = []
        self.launched_at_s = 0.0

    def acquire(self, placement: Placement, count: int = 1) -> list[Node]:
        self.acquired.append(placement)
        if placement.region in self.refuse:
            raise CapacityError(CapacityEvent(EventKind.STOCKOUT, placement, 50.0, message="no port block"))
        node_id = f"{placement.region}-{len(self.acquired)}"
        node = Node(node_id, placement, NodeState.RUNNING, self.launched_at_s, ray_label=f"label-{node_id}")
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


def loop_for(
    spec: PlatformSpec, region: str, provider: ProviderDouble, directory: Path, target: int | None, **options: Any
) -> tuple[CapacityLoop, list[CapacityReport]]:
    """The region's loop, its ledger in `directory/<slug>`, at 100 s unless `options` give a clock."""
    reports: list[CapacityReport] = []
    home = spec.region(region)
    loop = CapacityLoop(
        spec,
        home,
        provider,
        Ledger(directory / home.slug),
        local_catalog(spec, home),
        scaling=lambda: None if target is None else view(target),
        report=reports.append,
        **{"clock": lambda: 100.0, **options},
    )
    return loop, reports


def test_node_demand_fits_replicas_to_nodes_and_keeps_one_warm(spec):
    east, west = spec.regions
    assert (node_demand(spec, east, 3).replicas, node_demand(spec, west, 0).replicas) == (2, 1)
    assert node_demand(spec, east, 3).home == ("local", "local-us-east")


def test_a_published_target_is_never_taken_past_max_replicas(spec):
    assert wanted_replicas(spec, spec.regions[0], 500) == 4
    assert node_demand(spec, spec.regions[0], wanted_replicas(spec, spec.regions[0], 500)).replicas == 2  # not 250
    # Every model of a region scales on its own up to max_replicas: the region's bound is their sum.
    two_models = parse_spec({**SPEC, "models": [{"id": "m"}, {"id": "e"}]})
    assert wanted_replicas(two_models, two_models.regions[0], 500) == 8
    assert wanted_replicas(two_models, two_models.regions[0], 6) == 6
    # Before the first decision each model runs its initial replica.
    assert wanted_replicas(two_models, two_models.regions[0], None) == 2


def test_a_fixed_regions_nodes_are_for_its_replicas_of_every_model():
    fixed = {"name": "local/us-east", "location": {"lat": 39.0, "lon": -77.5}, "replicas": 3}
    spec = parse_spec({**SPEC, "models": [{"id": "m"}, {"id": "e"}], "regions": [fixed]})
    assert spec.replica_bounds(spec.regions[0]) == (6, 6)
    assert wanted_replicas(spec, spec.regions[0], None) == 6
    assert node_demand(spec, spec.regions[0], 6).replicas == 3  # two replicas a node


def test_the_loop_buys_what_its_region_needs_and_records_it(spec, tmp_path):
    provider = ProviderDouble(spec)
    loop, reports = loop_for(spec, "local/us-east", provider, tmp_path, target=4)
    loop.tick()
    assert [n.placement.region for n in provider.nodes()] == ["local-us-east", "local-us-east"]
    ledger = Ledger(tmp_path / "local-us-east")
    assert [e.kind for e in ledger.events()].count(EventKind.LAUNCHED) == 2
    snapshot = ledger.snapshot()
    assert len(snapshot.nodes) == 2 and snapshot.demand[("local", "local-us-east")] == 2
    assert reports[-1].unplaced_replicas == 0


def test_a_refused_acquisition_is_kept_as_a_stockout_and_reported_unplaced(spec, tmp_path):
    provider = ProviderDouble(spec, refuse={"local-eu-west"})
    loop, reports = loop_for(spec, "local/eu-west", provider, tmp_path, target=None)
    loop.tick()
    stockouts = [e for e in Ledger(tmp_path / "local-eu-west").events() if e.kind is EventKind.STOCKOUT]
    assert [e.placement.region for e in stockouts] == ["local-eu-west"]
    loop.tick()  # the zone is backed off now: placement reports the node it cannot place
    # The region's one replica, not the two a node could carry.
    assert reports[-1].unplaced_replicas == 1 and "local-eu-west" in reports[-1].reason


def test_a_release_refused_by_drain_falls_to_an_idle_node_of_the_same_kind(spec, tmp_path):
    provider = ProviderDouble(spec)
    target = {"replicas": 4}
    home = spec.region("local/us-east")
    loop = CapacityLoop(
        spec,
        home,
        provider,
        Ledger(tmp_path),
        local_catalog(spec, home),
        scaling=lambda: view(target["replicas"]),
        report=lambda report: None,
        clock=lambda: 100.0,
    )
    loop.tick()
    provider.busy = {n.id for n in provider.nodes()}  # every node runs something...
    idle = provider.nodes()[0].id
    provider.busy.discard(idle)  # ...but one
    target["replicas"] = 1
    loop.tick()
    assert idle not in provider.held and len(provider.nodes()) == 1
    provider.busy = {n.id for n in provider.nodes()}
    target["replicas"] = 0
    loop.tick()  # nothing to release: nothing changes, nothing fails
    assert len(provider.nodes()) == 1


def test_a_node_missing_from_its_cluster_past_the_join_timeout_is_released_counted_and_bought_again(spec, tmp_path):
    provider = ProviderDouble(spec)
    timeout_s = spec.capacity.join_timeout_s
    now = {"s": 100.0}
    joined: dict[str, set[str] | None] = {"labels": set()}
    counted: list[int] = []
    loop, _ = loop_for(
        spec,
        "local/us-east",
        provider,
        tmp_path,
        target=1,
        clock=lambda: now["s"],
        joined=lambda: joined["labels"],
        count_unjoined=lambda: counted.append(1),
    )
    loop.tick()  # buys the node
    (first,) = provider.nodes()
    loop.tick()  # first lists it, missing
    now["s"] += timeout_s
    loop.tick()  # missing for exactly the timeout: not yet
    assert provider.nodes() == [first] and counted == []
    joined["labels"] = {first.ray_label, "label-of-the-head"}
    now["s"] += 10
    loop.tick()  # it joined: the clock starts again whenever it is found
    joined["labels"] = None
    now["s"] += 5 * timeout_s
    loop.tick()  # the cluster cannot say which nodes it has: every node counts as found
    assert provider.nodes() == [first] and counted == []

    joined["labels"] = {"label-of-the-head"}  # Ray on it died
    now["s"] += 10
    loop.tick()
    now["s"] += timeout_s + 1
    loop.tick()
    (second,) = provider.nodes()  # bought again in the same tick
    assert second.id != first.id and counted == [1]
    (failed,) = [e for e in Ledger(tmp_path / "local-us-east").events() if e.kind is EventKind.JOIN_FAILED]
    # Missing since the tick that last counted it as found (10 s before the one that missed it).
    assert failed.node_id == first.id and f"for {timeout_s + 11:.0f} s" in failed.message
    now["s"] += 10
    loop.tick()  # the new node has its own time to join
    assert provider.nodes() == [second] and counted == [1]


def test_only_pending_or_running_nodes_a_provider_labels_are_watched_and_only_while_held():
    placement = Placement("aws", "us-east-1", "us-east-1a", "m7i.2xlarge", Market.SPOT)
    nodes = [
        Node("pending", placement, NodeState.PENDING, 0.0, "p"),
        Node("running", placement, NodeState.RUNNING, 0.0, "r"),
        Node("joined", placement, NodeState.RUNNING, 0.0, "j"),
        Node("draining", placement, NodeState.DRAINING, 0.0, "d"),
        Node("unlabelled", placement, NodeState.RUNNING, 0.0),
    ]
    watch = JoinWatch()
    assert watch.overdue(nodes, {"j"}, 0.0, 600.0) == []
    assert [n.id for n in watch.overdue(nodes, {"j"}, 601.0, 600.0)] == ["pending", "running"]
    assert watch.overdue(nodes[1:2], {"j"}, 602.0, 600.0) == nodes[1:2]
    # A node it stopped holding is forgotten: listed again, its clock starts again.
    assert watch.overdue(nodes[:1], {"j"}, 603.0, 600.0) == []


def test_a_fallback_to_another_region_is_not_bought_but_reported_unplaced(tmp_path):
    """A region's replicas cannot run on another region's nodes: what placement would move
    elsewhere goes to the global loop as unplaced demand."""
    limits = {"quotas": [{"cloud": "local", "region": "local-us-east", "accelerator": "cpu", "limit": 1}]}
    limits["fallback"] = [{"cloud": "local", "region": "local-eu-west"}]
    spec = parse_spec({**SPEC, "capacity": limits})
    home = spec.region("local/us-east")
    both = Catalog([*local_catalog(spec, home).offerings(), *local_catalog(spec, spec.regions[1]).offerings()])
    provider = ProviderDouble(spec)
    reports: list[CapacityReport] = []
    loop = CapacityLoop(
        spec, home, provider, Ledger(tmp_path), both, lambda: view(4), reports.append, clock=lambda: 100.0
    )
    decision = loop.tick()
    assert [(f.to[1], f.nodes) for f in decision.fallbacks] == [("local-eu-west", 1)]
    assert [p.region for p in provider.acquired] == ["local-us-east"]  # its quota of one node, nothing elsewhere
    assert reports[-1].unplaced_replicas == 2


def test_report_rows_sum_nodes_prices_events_and_quota_across_the_regions_ledgers(spec, tmp_path):
    east, west = spec.regions
    catalog = Catalog([*local_catalog(spec, east).offerings(), *local_catalog(spec, west).offerings()])
    here, there = placement_for(spec, east), placement_for(spec, west)
    Ledger(tmp_path / "east").record_snapshot(
        Snapshot(5_200.0, (Node("a", here, NodeState.RUNNING, 0.0), Node("b", here, NodeState.RUNNING, 0.0)), {})
    )
    Ledger(tmp_path / "west").record_snapshot(
        Snapshot(5_100.0, (Node("c", there, NodeState.RUNNING, 0.0),), {("local", "local-eu-west"): 1})
    )
    Ledger(tmp_path / "east").record_events(
        [
            CapacityEvent(EventKind.STOCKOUT, here, 5_000.0),
            CapacityEvent(EventKind.PREEMPTED, here, 5_100.0, "c"),
            CapacityEvent(EventKind.STOCKOUT, here, 100.0),  # over an hour ago
            CapacityEvent(EventKind.JOIN_FAILED, here, 5_150.0, "d"),
        ]
    )
    snapshot, events = fleet_ledger([Ledger(tmp_path / "east"), Ledger(tmp_path / "west")], since_s=5_200.0 - 3600)
    assert snapshot.at_s == 5_100.0 and len(snapshot.nodes) == 3 and len(events) == 3
    quotas = CapacitySpec(quotas=[Quota(cloud="local", region="local-us-east", accelerator="cpu", limit=5)])
    rows = {row["region"]: row for row in report_rows(snapshot, events, catalog, quotas, 5_200.0)}
    row = rows["local-us-east"]
    assert row["nodes"] == {str(Market.ON_DEMAND): 2, str(Market.SPOT): 0}
    assert (row["gpus"], row["stockouts_1h"], row["preemptions_1h"], row["failed_joins_1h"]) == (2, 1, 1, 1)
    assert row["quota_headroom"] == 3
    assert row["usd_per_hour"] == 0.0 and row["projected_usd_per_day"] == 0.0
    assert rows["local-eu-west"]["utilisation"] == 1.0


def test_a_ledger_line_that_breaks_its_type_is_reported_and_skipped_not_fatal(spec, tmp_path):
    malformed = []
    ledger = Ledger(tmp_path, on_malformed=malformed.append)
    ledger.record_events([CapacityEvent(EventKind.STOCKOUT, placement_for(spec, spec.regions[0]), 10.0)])
    with open(tmp_path / "capacity-events.jsonl", "a") as out:
        out.write('{"kind": "stockout", "at_s": "soon"}\n')
    ledger.record_events([CapacityEvent(EventKind.LAUNCHED, placement_for(spec, spec.regions[0]), 20.0, "n")])
    assert [e.kind for e in ledger.events()] == [EventKind.STOCKOUT, EventKind.LAUNCHED]
    (error,) = malformed
    assert error.contract == "CapacityEvent" and "line 2" in str(error) and "soon" not in str(error)


def test_spot_prices_of_the_regions_own_zones_are_refreshed_every_ten_minutes(spec, tmp_path):
    listed = Price(0.1631, None, "catalog file")
    cpu = Accelerator("cpu", 1, 0.0)
    offering = Offering("aws", "us-east-1", "us-east-1a", "m7i.2xlarge", cpu, 8, 32, listed, listed)
    catalog = Catalog([offering])
    asked: list[float] = []

    def quotes() -> list[SpotQuote]:
        asked.append(1.0)
        return [
            SpotQuote("aws", "us-east-1", "us-east-1a", "m7i.2xlarge", 0.1502, 90.0),
            SpotQuote("aws", "us-east-1", "us-east-1c", "m7i.2xlarge", 0.0101, 90.0),  # no subnet there
        ]

    region = spec.regions[0]
    loop = CapacityLoop(
        spec, region, ProviderDouble(spec), Ledger(tmp_path), catalog, lambda: None, lambda _: None, spot_quotes=quotes
    )
    loop.refresh_prices(100.0)
    loop.refresh_prices(100.0 + PRICE_REFRESH_S / 2)
    assert len(asked) == 1
    assert {(o.zone, o.spot.usd_per_h, o.spot.source) for o in catalog.offerings()} == {
        ("us-east-1a", 0.1502, "spot quote")
    }
    loop.refresh_prices(100.0 + PRICE_REFRESH_S)
    assert len(asked) == 2


def test_a_failed_price_refresh_keeps_the_prices_and_the_loop_going(spec, tmp_path):
    def refused() -> list[SpotQuote]:
        raise ProviderError("aws/us-east-1", "DescribeSpotPriceHistory", "UnauthorizedOperation")

    loop, reports = loop_for(spec, "local/us-east", ProviderDouble(spec), tmp_path, target=2)
    loop.spot_quotes = refused
    before = list(loop.catalog.offerings())
    loop.tick()
    assert list(loop.catalog.offerings()) == before and reports[-1].unplaced_replicas == 0
