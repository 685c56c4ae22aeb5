"""The spot simulator on small synthetic traces with known answers, the trace loader, and the Goal on real sets."""

import json
from pathlib import Path

import numpy as np
import pytest

from capacity.catalog import Catalog, Offering, Price, default_catalog
from capacity.model import Accelerator, CapacityEvent, EventKind, Market, Node, NodeState, Placement
from capacity.policy.placement import Demand, PlacementDecision, plan
from capacity.sim.spot_replay import SpotReplayConfig, compare, make_policy, simulate
from capacity.sim.spot_traces import UNLIMITED, TraceError, load_sets, parse_zone
from capacity.sim.spothedge import SpotHedge
from capacity.sim.trace_prices import DEFAULT_SPOT_FRACTION, PricingError, zone_prices
from capacity.sim.unread_events import ReadMark, unread
from meridian_core.capacity_spec import CapacitySpec

SPOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "spot" / "skypilot-spot-traces"


def write(
    folder: Path, zone: str, data: list[int], gap: float = 300, prices: list[float] | None = None, kind: str = "v100_1"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body: dict = {"metadata": {"gap_seconds": gap}, "data": data}
    if prices is not None:
        body["prices"] = prices
    path = folder / f"{zone}_{kind}.json"
    path.write_text(json.dumps(body))
    return path


def run(folder: Path, target: int, policies: list[str], **config):
    (traces,) = load_sets([folder])
    prices = zone_prices(traces, default_catalog())
    return {
        r.policy: r
        for r in compare(traces, prices, SpotReplayConfig(target=target, **config), CapacitySpec(), policies)
    }


def test_all_on_demand_is_always_available_and_saves_nothing(tmp_path: Path) -> None:
    write(tmp_path, "us-east-1a", [1, 0] * 50)
    result = run(tmp_path, 3, ["on_demand"])["on_demand"]
    assert result.availability == 1.0
    assert result.savings_vs_ondemand == 0.0
    assert result.preemptions == 0
    # 3 nodes × 100 steps × 300 s at the p3.2xlarge list price.
    assert result.cost_usd == pytest.approx(3 * 100 * 300 / 3600 * 3.06)


def test_naive_spot_in_a_zone_down_half_the_time_is_at_most_half_available(tmp_path: Path) -> None:
    write(tmp_path, "us-east-1a", ([1] * 10 + [0] * 10) * 10)
    write(tmp_path, "us-east-1b", [1] * 200)
    result = run(tmp_path, 2, ["naive_spot"], notice_s={})["naive_spot"]
    assert result.availability <= 0.5
    assert result.preemptions == 2 * 10  # both nodes, at every 1 → 0 edge
    assert result.savings_vs_ondemand > 0.5


def test_spot_cost_follows_the_trace_prices(tmp_path: Path) -> None:
    write(tmp_path, "us-east-1a", [1] * 10, gap=360, prices=[1.0] * 5 + [3.0] * 5)
    result = run(tmp_path, 1, ["round_robin"], spot_delay_s=0, on_demand_delay_s=0)["round_robin"]
    assert result.availability == 1.0
    assert result.cost_usd == pytest.approx(0.5 * 1.0 + 0.5 * 3.0)  # one node for an hour, half at each price


def test_meridian_reaches_the_target_when_zones_fail_one_at_a_time(tmp_path: Path) -> None:
    steps = 800
    for i, zone in enumerate(("us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d")):
        # Each zone is down for 20 steps in turn; never two at once.
        write(tmp_path, zone, [0 if (t // 20) % 4 == i else 1 for t in range(steps)])
    results = run(tmp_path, 2, ["spothedge", "meridian"])
    meridian = results["meridian"]
    assert meridian.preemptions > 0
    assert meridian.availability >= 0.999
    assert meridian.savings_vs_ondemand > 0.5
    assert meridian.savings_vs_ondemand >= results["spothedge"].savings_vs_ondemand


def test_meridian_falls_back_to_on_demand_when_spot_is_gone(tmp_path: Path) -> None:
    write(tmp_path, "us-east-1a", [1] * 50 + [0] * 150)
    write(tmp_path, "us-east-1b", [1] * 50 + [0] * 150)
    result = run(tmp_path, 2, ["meridian"], notice_s={})["meridian"]
    assert result.on_demand_node_hours > 0
    assert result.availability > 0.99  # no notice: one provisioning delay of outage, at the 50th step
    assert result.preemptions == 2  # zones calm until then: no spare


def test_meridian_in_the_simulator_is_plan_itself() -> None:
    assert make_policy("meridian", SpotReplayConfig(target=1)) is plan


def test_spothedge_placer_moves_preempted_zones_out_and_resets_below_two_active() -> None:
    v100 = Accelerator("V100", 1, 16)
    catalog = Catalog(
        Offering("aws", "us-east-1", z, "p3.2xlarge", v100, 8, 61, Price(3.0, None, "t"), Price(usd, 0.0, "t"))
        for z, usd in (("us-east-1a", 1.0), ("us-east-1b", 0.9), ("us-east-1c", 0.8))
    )
    demand = Demand("aws", "us-east-1", 2, "V100", 1)
    events: list[CapacityEvent] = []  # the recent-events window, as the simulator passes it

    def step(policy: SpotHedge, nodes: tuple[Node, ...] = ()) -> PlacementDecision:
        return policy([demand], nodes, catalog, CapacitySpec(), tuple(events), 0.0)

    def spot(zone: str) -> Placement:
        return Placement("aws", "us-east-1", zone, "p3.2xlarge", Market.SPOT)

    policy = SpotHedge(overprovision=1)
    first = step(policy)
    spot_zones = sorted(a.placement.zone for a in first.acquisitions if a.placement.market is Market.SPOT)
    assert spot_zones == ["us-east-1a", "us-east-1b", "us-east-1c"]  # one per zone: unused zones first
    assert sum(a.placement.market is Market.ON_DEMAND for a in first.acquisitions) == 2  # no spot ready yet
    events.append(CapacityEvent(EventKind.PREEMPTED, spot("us-east-1c"), 0.0))
    step(policy)
    assert policy.preempted == {"us-east-1c"}
    events.append(CapacityEvent(EventKind.STOCKOUT, spot("us-east-1b"), 0.0))
    step(policy)
    assert policy.preempted == set()  # only one zone left active: all reset
    ready = Node("n1", spot("us-east-1b"), NodeState.RUNNING, -500.0)
    policy.preempted = {"us-east-1b"}
    step(policy, (ready,))
    assert "us-east-1b" not in policy.preempted  # a replica came up there: active again


def test_peers_read_each_event_of_the_recent_window_once() -> None:
    def stockout(zone: str, at_s: float) -> CapacityEvent:
        return CapacityEvent(EventKind.STOCKOUT, Placement("aws", "us-east-1", zone, "x", Market.SPOT), at_s)

    window = [stockout("us-east-1a", 0.0), stockout("us-east-1a", 0.0)]
    fresh, mark = unread(window, ReadMark())
    assert fresh == window
    window.append(stockout("us-east-1a", 0.0))  # equal to the two read: a second round in the same step
    fresh, mark = unread(window, mark)
    assert fresh == [window[2]]
    assert unread(window, mark) == ([], mark)
    window = [stockout("us-east-1b", 300.0)]  # instant 0 aged out, whole
    fresh, mark = unread(window, mark)
    assert fresh == [stockout("us-east-1b", 300.0)] and mark == ReadMark(300.0, 1)


def test_loader_groups_sets_and_reads_binary_as_unlimited(tmp_path: Path) -> None:
    write(tmp_path / "set", "us-east-1a", [0, 1, 1, 0])
    write(tmp_path / "set", "us-west-2b", [1, 1, 0])
    (traces,) = load_sets([tmp_path / "set"])
    assert traces.binary and traces.steps == 3  # cut to the shortest file
    assert traces.zones[0].capacity.tolist() == [0, UNLIMITED, UNLIMITED]
    write(tmp_path / "multi", "us-east-2a", [0, 4, 2])
    (multi,) = load_sets([tmp_path / "multi"])
    assert not multi.binary and multi.zones[0].capacity.tolist() == [0, 4, 2]
    assert parse_zone("us-central1-a_c3-88") == ("gcp", "us-central1", "us-central1-a", "c3-88")
    assert parse_zone("us-east-1f_v100_1") == ("aws", "us-east-1", "us-east-1f", "v100_1")


def test_loader_rejects_bad_sets(tmp_path: Path) -> None:
    write(tmp_path / "gaps", "us-east-1a", [1, 1], gap=300)
    write(tmp_path / "gaps", "us-east-1b", [1, 1], gap=600)
    with pytest.raises(TraceError, match="gap_seconds"):
        load_sets([tmp_path / "gaps"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "us-east-1a_v100_1.json").write_text('{"data": [1]}')
    with pytest.raises(TraceError, match="not a spot trace"):
        load_sets([tmp_path / "bad"])
    with pytest.raises(TraceError, match="no such file"):
        load_sets([tmp_path / "missing"])


def test_trace_prices_win_then_the_documented_default(tmp_path: Path) -> None:
    write(tmp_path, "us-east-1a", [1, 1], prices=[0.5, 0.7])
    write(tmp_path, "us-east-1b", [1, 1])
    (traces,) = load_sets([tmp_path])
    prices = zone_prices(traces, default_catalog(), spot_usd_per_h=None)
    assert prices.spot[0].tolist() == [0.5, 0.7]
    assert prices.spot[1].tolist() == pytest.approx([DEFAULT_SPOT_FRACTION * 3.06] * 2)
    given = zone_prices(traces, default_catalog(), on_demand_usd_per_h=10.0, spot_usd_per_h=2.0)
    assert given.spot[0].tolist() == [0.5, 0.7] and given.spot[1].tolist() == [2.0, 2.0]
    assert np.all(given.on_demand == 10.0)


@pytest.mark.parametrize(
    "zones, kind, instance_type, on_demand",
    [
        (["us-east-1a", "us-west-2b"], "v100_1", "p3.2xlarge", 3.06),
        (["us-east-1a"], "k80_8", "p2.8xlarge", 7.2),
        (["us-central1-a", "europe-west4-a"], "a100_40gb_8", "a2-highgpu-8g", None),
        (["us-central1-a"], "a100_80gb_1", "a2-ultragpu-1g", None),
        (["us-east1-b"], "l4_1", "g2-standard-4", None),
    ],
)
def test_a_trace_kind_is_priced_from_the_catalog_without_flags(tmp_path, zones, kind, instance_type, on_demand):
    for zone in zones:
        write(tmp_path, zone, [1, 0, 1], kind=kind)
    (traces,) = load_sets([tmp_path])
    catalog = default_catalog()
    prices = zone_prices(traces, catalog)
    assert prices.instance_type == instance_type
    listed = [o for o in catalog.offerings() if o.instance_type == instance_type and o.region in traces.zones[0].region]
    expected = on_demand if on_demand is not None else listed[0].on_demand.usd_per_h
    assert prices.on_demand[0] == pytest.approx(expected)
    assert np.all(prices.on_demand > 0) and np.all(prices.spot > 0)


def test_a_kind_whose_accelerator_the_catalog_lacks_fails_naming_it(tmp_path):
    write(tmp_path, "us-central1-a", [1, 1], kind="tpu_8")
    (traces,) = load_sets([tmp_path])
    with pytest.raises(PricingError, match=r"no gcp type with 8× TPU; pass --on-demand-price"):
        zone_prices(traces, default_catalog())
    assert zone_prices(traces, default_catalog(), on_demand_usd_per_h=12.0).on_demand.tolist() == [12.0]


def test_a_replacement_bought_at_the_notice_keeps_availability_through_one_preemption(tmp_path: Path) -> None:
    # Two zones, target 2: one node in each (calm, so no spare). Zone a is lost at step 10 (600 s).
    write(tmp_path, "us-east-1a", [1] * 10 + [0] * 30, gap=60)
    write(tmp_path, "us-east-1b", [1] * 40, gap=60)
    measured = 40 * 60 - 120  # after the first boot
    warned = run(tmp_path, 2, ["meridian"])["meridian"]  # AWS: 120 s notice, 120 s boot
    assert warned.preemptions == 1
    assert warned.availability == 1.0  # the replacement in b is ready as the node in a goes
    short_notice = run(tmp_path, 2, ["meridian"], notice_s={"aws": 30.0})["meridian"]
    assert short_notice.availability == pytest.approx(1 - 90 / measured)  # a 90 s gap is left
    unwarned = run(tmp_path, 2, ["meridian"], notice_s={})["meridian"]
    assert unwarned.availability == pytest.approx(1 - 120 / measured)  # a whole boot of outage


def test_a_warned_node_is_draining_to_the_policy_and_preempted_when_the_notice_runs_out(tmp_path: Path) -> None:
    write(tmp_path, "us-east-1a", [1] * 4 + [0] * 6, gap=60)
    seen: list[tuple[float, tuple[NodeState, ...], tuple[EventKind, ...]]] = []

    def spy(demands, nodes, catalog, spec, events, now_s):
        seen.append((now_s, tuple(n.state for n in nodes), tuple(e.kind for e in events)))
        return plan(demands, nodes, catalog, spec, events, now_s)

    (traces,) = load_sets([tmp_path])
    prices = zone_prices(traces, default_catalog())
    config = SpotReplayConfig(target=1, spot_delay_s=0, on_demand_delay_s=0)
    result = simulate(traces, prices, "spy", spy, config, CapacitySpec())
    at = {now: (states, kinds) for now, states, kinds in seen}
    assert NodeState.DRAINING in at[240.0][0] and EventKind.PREEMPTION_NOTICE in at[240.0][1]
    assert EventKind.PREEMPTED in at[360.0][1]  # 120 s after the notice
    assert result.availability == 1.0  # on demand, bought at the notice, took over at once


def test_a_policy_acting_on_losses_hears_of_a_warned_node_when_it_is_taken_not_at_the_next_sample(
    tmp_path: Path,
) -> None:
    # 300 s samples; zone a is lost at step 10. Round-robin acts on losses, not notices.
    write(tmp_path, "us-east-1a", [1] * 10 + [0] * 30, gap=300)
    write(tmp_path, "us-east-1b", [1] * 40, gap=300)
    measured = 40 * 300 - 120
    warned = run(tmp_path, 2, ["round_robin"])["round_robin"]
    unwarned = run(tmp_path, 2, ["round_robin"], notice_s={})["round_robin"]
    # One boot of outage either way; acting at the next sample would have cost 300 s.
    assert warned.availability == pytest.approx(1 - 120 / measured)
    assert unwarned.availability == pytest.approx(1 - 120 / measured)

    seen: list[float] = []

    def spy(demands, nodes, catalog, spec, events, now_s):
        seen.append(now_s)
        return plan(demands, nodes, catalog, spec, events, now_s)

    (traces,) = load_sets([tmp_path])
    simulate(traces, zone_prices(traces, default_catalog()), "spy", spy, SpotReplayConfig(target=2), CapacitySpec())
    assert 3000.0 + 120.0 in seen  # called when the node warned at 3000 s is taken


GOAL_SETS = (
    "availability/1-node/aws-02-15-2023",
    "preemption/4-node/aws-08-03-2023",
    "availability/16-node/aws-08-27-2023",
)
# The 2022 8-GPU sets: spot is missing from both zones for much of them (capacity.md's savings bound).
SPARSE_SETS = ("availability/1-node/aws-10-26-2022",)


@pytest.fixture(scope="module")
def goal_results():
    if not SPOT.is_dir():
        pytest.skip("shared/data/spot not present")
    out = {}
    for name in GOAL_SETS:
        (traces,) = load_sets([SPOT / name])
        prices = zone_prices(traces, default_catalog())
        policies = ["round_robin", "spothedge", "meridian"]
        results = compare(traces, prices, SpotReplayConfig(target=4), CapacitySpec(), policies)
        out[name] = {r.policy: r for r in results}
    return out


# Today's availability per set (benchmarks/results/capacity.md, with AWS's 120 s notice), rounded down.
TODAYS_AVAILABILITY = {
    "availability/1-node/aws-02-15-2023": 0.9999,
    "preemption/4-node/aws-08-03-2023": 0.9999,
    "availability/16-node/aws-08-27-2023": 0.9999,
}


@pytest.mark.parametrize("name", GOAL_SETS)
def test_meridian_holds_todays_availability(goal_results, name: str) -> None:
    assert goal_results[name]["meridian"].availability >= TODAYS_AVAILABILITY[name]


@pytest.mark.parametrize("name", GOAL_SETS)
@pytest.mark.parametrize("peer", ["spothedge", "round_robin"])
def test_meridian_saves_more_than_a_peer_at_least_as_available(goal_results, name: str, peer: str) -> None:
    meridian, other = goal_results[name]["meridian"], goal_results[name][peer]
    assert other.availability < meridian.availability or meridian.savings_vs_ondemand > other.savings_vs_ondemand


@pytest.mark.parametrize("name", GOAL_SETS)
def test_meridian_saves_half_against_on_demand(goal_results, name: str) -> None:
    assert goal_results[name]["meridian"].savings_vs_ondemand >= 0.5


@pytest.mark.parametrize("name", GOAL_SETS)
def test_meridian_reaches_three_nines(goal_results, name: str) -> None:
    assert goal_results[name]["meridian"].availability >= 0.999


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="Goal not met: under 50% savings where spot is missing from every zone much of the time (capacity.md)",
)
@pytest.mark.parametrize("kind", ["k80_8", "v100_8"])
def test_meridian_saves_half_on_the_sparse_8_gpu_sets(kind: str) -> None:
    if not SPOT.is_dir():
        pytest.skip("shared/data/spot not present")
    (traces,) = [t for t in load_sets([SPOT / SPARSE_SETS[0]]) if t.kind == kind]
    prices = zone_prices(traces, default_catalog())
    (meridian,) = compare(traces, prices, SpotReplayConfig(target=4), CapacitySpec(), ["meridian"])
    assert meridian.availability >= 0.999
    assert meridian.savings_vs_ondemand >= 0.5
