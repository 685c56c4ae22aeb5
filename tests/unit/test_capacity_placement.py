"""Meridian's placement policy: spread, on-demand base and gap, backoff, quotas, fallback, drain."""

from collections import Counter

import pytest

from capacity.catalog import Catalog, Offering, Price
from capacity.model import Accelerator, CapacityEvent, EventKind, Market, Node, NodeState, Placement
from capacity.policy.placement import Demand, PlacementDecision, hedge, plan
from meridian_core.capacity_spec import CapacitySpec, FallbackTarget, Quota

V100 = Accelerator("V100", 1, 16)
HOME = ("aws", "us-east-1")
ZONES = {"us-east-1": ("us-east-1a", "us-east-1b", "us-east-1c"), "us-west-2": ("us-west-2a", "us-west-2b")}


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(
        Offering("aws", region, zone, "p3.2xlarge", V100, 8, 61, Price(3.06, None, "t"), Price(0.9, None, "t"))
        for region, zones in ZONES.items()
        for zone in zones
    )


def demand(replicas: int = 4) -> Demand:
    return Demand("aws", "us-east-1", replicas, "V100", 1)


def node(node_id: str, zone: str, market: Market = Market.SPOT, state: NodeState = NodeState.RUNNING) -> Node:
    region = zone[:-1]
    return Node(node_id, Placement("aws", region, zone, "p3.2xlarge", market), state, launched_at_s=float(len(node_id)))


def zones_of(decision: PlacementDecision, market: Market) -> Counter[str]:
    return Counter(a.placement.zone for a in decision.acquisitions if a.placement.market is market)


def test_spot_is_spread_across_zones_with_no_spare_while_calm(catalog: Catalog) -> None:
    decision = plan([demand(4)], [], catalog, CapacitySpec(), [], now_s=0.0)
    spot = zones_of(decision, Market.SPOT)
    assert sum(spot.values()) == 4  # no preemption remembered: no spare
    assert set(spot) == set(ZONES["us-east-1"])  # home region only: it can take them all
    assert max(spot.values()) - min(spot.values()) <= 1
    assert not zones_of(decision, Market.ON_DEMAND)
    assert all(a.reason for a in decision.acquisitions)


def test_on_demand_base_is_held(catalog: Catalog) -> None:
    spec = CapacitySpec(on_demand_base=2)
    decision = plan([demand(4)], [], catalog, spec, [], now_s=0.0)
    assert sum(zones_of(decision, Market.ON_DEMAND).values()) == 2
    assert sum(zones_of(decision, Market.SPOT).values()) == 2  # the other 2; calm, so no spare
    held = [node("od1", "us-east-1a", Market.ON_DEMAND), node("od2", "us-east-1b", Market.ON_DEMAND)]
    held += [node(f"s{i}", z) for i, z in enumerate(("us-east-1a", "us-east-1b"))]
    steady = plan([demand(4)], held, catalog, spec, [], now_s=10.0)
    assert steady.acquisitions == () and steady.releases == ()


def test_stocked_out_zone_is_backed_off_then_retried(catalog: Catalog) -> None:
    spec = CapacitySpec(stockout_backoff_s=300)
    held = [node("s1", "us-east-1b"), node("s2", "us-east-1c")]
    stockout = CapacityEvent(
        EventKind.STOCKOUT, Placement("aws", "us-east-1", "us-east-1a", "p3.2xlarge", Market.SPOT), 100.0
    )
    during = plan([demand(3)], held, catalog, spec, [stockout], now_s=200.0)
    assert "us-east-1a" not in zones_of(during, Market.SPOT)
    assert sum(zones_of(during, Market.SPOT).values()) == 1  # the third node, in b or c
    after = plan([demand(3)], held, catalog, spec, [stockout], now_s=401.0)
    assert zones_of(after, Market.SPOT) == Counter({"us-east-1a": 1})  # least-loaded zone again


def test_repeated_stockouts_back_off_longer(catalog: Catalog) -> None:
    spec = CapacitySpec(stockout_backoff_s=100, stockout_backoff_max_s=1000)
    where = Placement("aws", "us-east-1", "us-east-1a", "p3.2xlarge", Market.SPOT)
    events = [CapacityEvent(EventKind.STOCKOUT, where, t) for t in (0.0, 10.0, 20.0)]
    held = [node("s1", "us-east-1b"), node("s2", "us-east-1c")]
    # Three stockouts: 100 × 2² = 400 s from the last one.
    assert "us-east-1a" not in zones_of(plan([demand(3)], held, catalog, spec, events, now_s=400.0), Market.SPOT)
    assert "us-east-1a" in zones_of(plan([demand(3)], held, catalog, spec, events, now_s=421.0), Market.SPOT)


def test_spot_gap_is_filled_with_on_demand_when_every_zone_stocks_out(catalog: Catalog) -> None:
    events = [
        CapacityEvent(EventKind.STOCKOUT, Placement("aws", "us-east-1", z, "p3.2xlarge", Market.SPOT), 0.0)
        for z in ZONES["us-east-1"]
    ]
    decision = plan([demand(3)], [], catalog, CapacitySpec(), events, now_s=1.0)
    assert not zones_of(decision, Market.SPOT)
    assert sum(zones_of(decision, Market.ON_DEMAND).values()) == 3  # capped at the spot it stands in for
    assert decision.shortfalls == ()  # on demand took all of it: nothing is short


def test_demand_neither_market_can_take_is_short_once_saying_why_both_refused(catalog: Catalog) -> None:
    spec = CapacitySpec(quotas=[Quota(cloud="aws", region="us-east-1", accelerator="v100", limit=0)])
    events = [
        CapacityEvent(EventKind.STOCKOUT, Placement("aws", "us-east-1", z, "p3.2xlarge", Market.SPOT), 0.0)
        for z in ZONES["us-east-1"]
    ]
    (short,) = plan([demand(3)], [], catalog, spec, events, now_s=1.0).shortfalls
    assert short.nodes == 3  # not 3 for spot and 3 again for on demand
    assert short.reason.startswith("spot: ") and "on_demand: " in short.reason and "quota" in short.reason


def test_quota_is_respected(catalog: Catalog) -> None:
    spec = CapacitySpec(quotas=[Quota(cloud="aws", region="us-east-1", accelerator="v100", limit=3)])
    held = [node("s1", "us-east-1a")]
    decision = plan([demand(4)], held, catalog, spec, [], now_s=0.0)
    in_region = sum(1 for a in decision.acquisitions if a.placement.region == "us-east-1")
    assert in_region == 2  # 1 held + 2 new = the limit of 3
    assert any("quota" in s.reason for s in decision.shortfalls)
    # Draining nodes still count against the quota.
    draining = [node("d1", "us-east-1a", state=NodeState.DRAINING), node("d2", "us-east-1b", state=NodeState.DRAINING)]
    assert len(plan([demand(4)], draining, catalog, spec, [], now_s=0.0).acquisitions) == 1


def test_exhausted_region_falls_back_and_says_so(catalog: Catalog) -> None:
    spec = CapacitySpec(
        fallback=[FallbackTarget(cloud="aws", region="us-west-2")],
        quotas=[Quota(cloud="aws", region="us-east-1", accelerator="V100", limit=0)],
    )
    decision = plan([demand(2)], [], catalog, spec, [], now_s=0.0)
    assert decision.acquisitions
    assert {a.placement.region for a in decision.acquisitions} == {"us-west-2"}
    assert all(a.is_fallback and a.demand == HOME for a in decision.acquisitions)
    assert len(decision.fallbacks) == 1
    moved = decision.fallbacks[0]
    assert (moved.demand, moved.to, moved.nodes) == (HOME, ("aws", "us-west-2"), 2)
    assert "us-east-1" in moved.reason and "us-west-2" in moved.reason
    # Next decision: the nodes in the fallback region serve the moved demand; nothing is bought twice.
    held = [node(f"w{i}", a.placement.zone) for i, a in enumerate(decision.acquisitions)]
    again = plan([demand(2)], held, catalog, spec, [], now_s=10.0)
    assert again.acquisitions == () and again.releases == ()


def test_no_fallback_without_a_fallback_target(catalog: Catalog) -> None:
    spec = CapacitySpec(quotas=[Quota(cloud="aws", region="us-east-1", accelerator="V100", limit=0)])
    decision = plan([demand(2)], [], catalog, spec, [], now_s=0.0)
    assert decision.acquisitions == ()
    assert decision.shortfalls


def test_preemption_notice_drains_at_once_and_replaces_in_the_same_decision(catalog: Catalog) -> None:
    held = [
        node(f"s{i}", z) for i, z in enumerate(("us-east-1a", "us-east-1b", "us-east-1c", "us-east-1a", "us-east-1b"))
    ]
    notice = CapacityEvent(EventKind.PREEMPTION_NOTICE, held[0].placement, 50.0, node_id="s0")
    decision = plan([demand(4)], held, catalog, CapacitySpec(), [notice], now_s=50.0)
    assert [(r.node_id, r.drain_first) for r in decision.releases] == [("s0", True)]
    assert "preemption" in decision.releases[0].reason
    replacement = zones_of(decision, Market.SPOT)
    assert sum(replacement.values()) == 1
    assert "us-east-1a" not in replacement  # the noticed zone is backed off


def test_release_drains_running_nodes_first(catalog: Catalog) -> None:
    held = [
        node("run1", "us-east-1a"),
        node("run22", "us-east-1b"),
        node("pend333", "us-east-1c", state=NodeState.PENDING),
        node("drain4444", "us-east-1a", state=NodeState.DRAINING),
    ]
    decision = plan([demand(2)], held, catalog, CapacitySpec(), [], now_s=0.0)  # 2 spot wanted, no spare
    released = {r.node_id: r.drain_first for r in decision.releases}
    assert released == {"pend333": False}  # a booting node carries no traffic
    shrink = plan([demand(0)], held, catalog, CapacitySpec(), [], now_s=0.0)
    released = {r.node_id: r.drain_first for r in shrink.releases}
    assert released == {"run1": True, "run22": True, "pend333": False}  # the draining one is the executor's


def test_on_demand_is_kept_until_spot_is_ready(catalog: Catalog) -> None:
    od = [node(f"od{i}", "us-east-1a", Market.ON_DEMAND) for i in range(2)]
    booting = [node(f"s{i}", z, state=NodeState.PENDING) for i, z in enumerate(("us-east-1a", "us-east-1b"))]
    waiting = plan([demand(2)], od + booting, catalog, CapacitySpec(), [], now_s=0.0)
    assert waiting.acquisitions == () and waiting.releases == ()  # no gap to fill, none to open
    ready = [node(n.id, n.placement.zone) for n in booting]
    covered = plan([demand(2)], od + ready, catalog, CapacitySpec(), [], now_s=200.0)
    assert sorted((r.node_id, r.drain_first) for r in covered.releases) == [("od0", True), ("od1", True)]


def test_spot_disabled_means_on_demand_only(catalog: Catalog) -> None:
    decision = plan([demand(3)], [], catalog, CapacitySpec(spot_enabled=False), [], now_s=0.0)
    assert sum(zones_of(decision, Market.ON_DEMAND).values()) == 3
    assert not zones_of(decision, Market.SPOT)


def lost(zone: str, at_s: float, node_id: str) -> CapacityEvent:
    return CapacityEvent(
        EventKind.PREEMPTED, Placement("aws", zone[:-1], zone, "p3.2xlarge", Market.SPOT), at_s, node_id
    )


def test_hedge_is_zero_when_calm_and_rises_when_losses_cluster() -> None:
    spec = CapacitySpec(spot_spare=2, hedge_burst_s=600, hedge_calm_s=3600)
    assert hedge([], spec, now_s=5000.0) == 0  # nothing lost
    assert hedge([1000.0], spec, now_s=1500.0) == 1  # one loss, recent
    assert hedge([1000.0, 2000.0, 3000.0], spec, now_s=3100.0) == 1  # steady losses, never two together
    assert hedge([1000.0, 1100.0], spec, now_s=1500.0) == 2  # two zones lost together
    assert hedge([1000.0, 1100.0, 1200.0], spec, now_s=1500.0) == 2  # capped at spot_spare
    assert hedge([1000.0, 1100.0], spec, now_s=1100.0 + 3601.0) == 0  # calm again


def test_spares_follow_the_losses_and_avoid_the_zones_that_lost(catalog: Catalog) -> None:
    held = [node(f"s{i}", z) for i, z in enumerate(("us-east-1a", "us-east-1b", "us-east-1c", "us-east-1b"))]
    calm = plan([demand(4)], held, catalog, CapacitySpec(), [], now_s=5000.0)
    assert calm.acquisitions == () and calm.releases == ()
    # Two nodes lost together in us-east-1a 100 s ago (already replaced): two spares, not in a
    # (backed off, and it preempted us), nor both in one zone.
    burst = [lost("us-east-1a", 4900.0, "gone1"), lost("us-east-1a", 4950.0, "gone2")]
    clustered = plan([demand(4)], held, catalog, CapacitySpec(), burst, now_s=5000.0)
    spares = zones_of(clustered, Market.SPOT)
    assert sum(spares.values()) == 2 and "us-east-1a" not in spares
    # An hour later the zones have been calm: the spares go again.
    spared = held + [node("x1", "us-east-1c"), node("x2", "us-west-2a")]
    later = plan([demand(4)], spared, catalog, CapacitySpec(), burst, now_s=4950.0 + 3601.0)
    assert len(later.releases) == 2 and later.acquisitions == ()


def test_a_notice_and_the_preemption_after_it_are_one_loss(catalog: Catalog) -> None:
    where = Placement("aws", "us-east-1", "us-east-1a", "p3.2xlarge", Market.SPOT)
    events = [
        CapacityEvent(EventKind.PREEMPTION_NOTICE, where, 100.0, "s0"),
        CapacityEvent(EventKind.PREEMPTED, where, 220.0, "s0"),
    ]
    held = [node(f"h{i}", z) for i, z in enumerate(("us-east-1b", "us-east-1c", "us-east-1b", "us-east-1c"))]
    decision = plan([demand(4)], held, catalog, CapacitySpec(), events, now_s=300.0)
    assert sum(zones_of(decision, Market.SPOT).values()) == 1  # one spare, not two
