import pytest

from geo_router.sim.routing_replay import SimRegion, TraceRequest, load_mooncake
from geo_router.sim.routing_suite import (
    REPLICAS_PER_REGION,
    Cell,
    Site,
    at_load,
    choose_sites,
    load_sites,
    provision,
    run_cell,
    with_arrivals,
)
from meridian_core.geo import LatLon
from meridian_core.replica_model import H100_LLAMA31_8B
from meridian_core.spec import load_spec

from ..conftest import REPO

SHARED = REPO.parent / "shared" / "data"
MOONCAKE = SHARED / "traces" / "mooncake_conversation.jsonl"
SITES = SHARED / "regions" / "regions.csv"
needs_shared_data = pytest.mark.skipif(
    not (MOONCAKE.is_file() and SITES.is_file()), reason="shared/data is not beside the repository"
)


def trace(n: int, gap_ms: float = 100.0, tokens: int = 1000) -> list[TraceRequest]:
    return [TraceRequest(i * gap_ms, tokens, 10, (i, i + 1)) for i in range(n)]


def test_the_first_site_chosen_is_the_one_nearest_the_clients_weight():
    tokyo, nowhere = Site("tokyo", LatLon(35.68, 139.65)), Site("south-pacific", LatLon(-48.0, -123.0))
    assert choose_sites([nowhere, tokyo], 1) == [tokyo]
    # The second goes where the first leaves clients far: another continent, not next door.
    osaka, frankfurt = Site("osaka", LatLon(34.69, 135.50)), Site("frankfurt", LatLon(50.11, 8.68))
    first, second = choose_sites([nowhere, tokyo, osaka, frankfurt], 2)
    assert first in (tokyo, osaka) and second == frankfurt


@needs_shared_data
def test_shared_sites_load_and_grow_by_one():
    sites = load_sites(SITES)
    assert len(sites) > 8 and all(-90 <= s.location.lat <= 90 for s in sites)
    assert choose_sites(sites, 5)[:3] == choose_sites(sites, 3)


def test_replicas_follow_nearest_demand_with_one_at_least():
    sites = [Site("east", LatLon(39.04, -77.49)), Site("tokyo", LatLon(35.68, 139.65))]
    requests = trace(400)
    regions = provision(sites, requests, H100_LLAMA31_8B)
    assert sum(r.replicas for r in regions) == REPLICAS_PER_REGION * len(sites)
    assert all(r.replicas >= 1 for r in regions)


def test_time_warp_sets_the_offered_prompt_load():
    regions = [SimRegion("a", LatLon(0, 0), 2, H100_LLAMA31_8B)]
    warped = at_load(trace(101, gap_ms=10.0), regions, 0.5)
    span_s = (warped[-1].arrival_ms - warped[0].arrival_ms) / 1000
    offered = sum(r.input_tokens for r in warped) / span_s
    assert offered == pytest.approx(0.5 * 2 * H100_LLAMA31_8B.prefill_tokens_per_s)
    assert [r.blocks for r in warped] == [r.blocks for r in trace(101)]


def test_poisson_arrivals_keep_the_requests_their_order_and_rate():
    original = trace(2000)
    poisson = with_arrivals(original, "poisson")
    assert [r.blocks for r in poisson] == [r.blocks for r in original]
    assert all(a.arrival_ms <= b.arrival_ms for a, b in zip(poisson, poisson[1:], strict=False))
    gaps = {round(b.arrival_ms - a.arrival_ms, 6) for a, b in zip(poisson, poisson[1:], strict=False)}
    assert len(gaps) > 100  # not the trace's even spacing
    mean_gap = (poisson[-1].arrival_ms - poisson[0].arrival_ms) / (len(poisson) - 1)
    assert mean_gap == pytest.approx(100.0, rel=0.1)
    assert with_arrivals(original, "trace") == original


@needs_shared_data
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="suite goal not met: at 0.9 load over 8 regions Meridian does not have the lowest TTFT with its mean RTT "
    "within 1.10x nearest-only's (benchmarks/results/routing_simulation.md)",
)
def test_meridian_meets_the_suite_goal_on_a_heavy_cell():
    scoring = load_spec(REPO / "configs" / "sim-global.yaml").router.scoring
    result = run_cell(
        Cell("trace", 8, 0.9, 250), load_mooncake(MOONCAKE, 600), load_sites(SITES), H100_LLAMA31_8B, scoring
    )
    rows = {row.policy: row for row in result.results}
    meridian, others = rows.pop("meridian"), rows.values()
    assert meridian.ttft_mean_ms < min(row.ttft_mean_ms for row in others)
    assert meridian.ttft_p99_ms < min(row.ttft_p99_ms for row in others)
    assert meridian.mean_rtt_ms <= 1.10 * rows["nearest"].mean_rtt_ms


@needs_shared_data
def test_each_cell_also_measures_the_scorer_with_its_rtt_bound_lifted():
    """On a heavy cell the same scorer with its RTT bound lifted spills more and goes
    further: the run measures what the bound costs, on the same requests."""
    scoring = load_spec(REPO / "configs" / "sim-global.yaml").router.scoring
    result = run_cell(
        Cell("trace", 8, 0.9, 250), load_mooncake(MOONCAKE, 600), load_sites(SITES), H100_LLAMA31_8B, scoring
    )
    rows = {row.policy: row for row in result.results}
    bounded, lifted = rows["meridian"], result.meridian_without_rtt_bound
    assert lifted.spill_rate > 2 * bounded.spill_rate
    assert lifted.mean_rtt_ms > 1.25 * bounded.mean_rtt_ms
    assert lifted.requests == bounded.requests == 600
