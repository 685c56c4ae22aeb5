import math

import pytest

from geo_router.policy.scoring import (
    PrefixIndex,
    RegionLoad,
    RequestFacts,
    RouteDecision,
    RoutingMemory,
    RttCorrector,
    SpillPrice,
    choose,
    estimate,
)
from meridian_core.geo import LatLon, haversine_km
from meridian_core.replica_model import CPU_SMOLLM2_135M, H100_LLAMA31_8B
from meridian_core.rtt import prior_rtt_ms
from meridian_core.spec import ScoringSpec

ASHBURN, DUBLIN, PARIS, BOSTON = LatLon(39.04, -77.49), LatLon(53.35, -6.26), LatLon(48.85, 2.35), LatLon(42.36, -71.06)
# Nearer Dublin than Ashburn, but by only a few ms of RTT.
MID_ATLANTIC = LatLon(47.0, -42.0)
# Both regions run the CPU replica: 2,500 prompt tokens/s, a ~50 ms decode step.
PROFILE = CPU_SMOLLM2_135M
PROFILES = {"us-east": PROFILE, "eu-west": PROFILE}
SCORING = ScoringSpec()


def regions(east: dict | None = None, west: dict | None = None) -> list[RegionLoad]:
    return [
        RegionLoad("us-east", ASHBURN, **{"ready_replicas": 1, **(east or {})}),
        RegionLoad("eu-west", DUBLIN, **{"ready_replicas": 1, **(west or {})}),
    ]


def facts(client=PARIS, prompt=200, blocks=(), session=None, cell=None) -> RequestFacts:
    return RequestFacts(client, prompt, tuple(blocks), tokens_per_block=64, session=session, cell=cell)


def answered(memory: RoutingMemory, region: str, request: RequestFacts) -> None:
    """`region` answered `request`, routed on an idle fleet with a mean RTT budget that
    covers any spill: the spill price stays as it was."""
    unbounded = ScoringSpec(mean_rtt_budget=100.0)
    memory.remember(region, request, choose(regions(), request, memory, PROFILES, unbounded))
    assert memory.spill_markup == 1.0


def test_idle_regions_nearest_wins():
    decision = choose(regions(), facts(), RoutingMemory(), PROFILES, SCORING)
    assert decision.ranked == ("eu-west", "us-east") and decision.reason == "nearest"
    assert choose(regions(), facts(client=BOSTON), RoutingMemory(), PROFILES, SCORING).ranked[0] == "us-east"


def test_a_queue_sends_traffic_across_the_ocean():
    decision = choose(regions(west={"running": 16, "waiting": 40}), facts(), RoutingMemory(), PROFILES, SCORING)
    assert decision.ranked[0] == "us-east" and decision.reason == "load"
    east, west = sorted(decision.estimates, key=lambda e: e.region)
    assert west.queue_ms > east.rtt_ms - west.rtt_ms  # the queue costs more than the ocean


def test_router_in_flight_counts_before_the_next_poll():
    quiet = estimate(regions()[1], facts(), 0, PROFILE, SCORING)
    busy = estimate(regions(west={"in_flight": 64})[1], facts(), 0, PROFILE, SCORING)
    assert busy.queue_ms > quiet.queue_ms and busy.ttft_ms > quiet.ttft_ms


def test_each_waiting_request_ahead_prefills_a_typical_prompt():
    one_replica = estimate(regions(west={"running": 4, "waiting": 6})[1], facts(), 0, PROFILE, SCORING)
    assert one_replica.queue_ms == pytest.approx(6 * 1000 * PROFILE.prefill_s(SCORING.typical_prompt_tokens, 4))
    # Two replicas share the same load: half the waiting ahead of each, a lighter batch.
    two = estimate(regions(west={"ready_replicas": 2, "running": 4, "waiting": 6})[1], facts(), 0, PROFILE, SCORING)
    assert two.queue_ms == pytest.approx(3 * 1000 * PROFILE.prefill_s(SCORING.typical_prompt_tokens, 2))
    # The request's own prompt prefills while the running batch decodes.
    assert one_replica.prefill_ms == pytest.approx(1000 * PROFILE.prefill_s(200, 4))


def test_with_every_sequence_slot_taken_a_request_waits_for_one_to_finish():
    scoring = ScoringSpec(typical_prompt_tokens=100, typical_output_tokens=200)
    slots = PROFILE.max_num_seqs  # the KV cache holds more typical requests than this
    assert PROFILE.kv_capacity_tokens // 300 > slots
    free = estimate(regions(west={"running": slots - 1})[1], facts(), 0, PROFILE, scoring)
    assert free.queue_ms == 0.0
    # Full, nothing waiting: one sequence must finish, about every 200 decode steps / 256 sequences.
    full = estimate(regions(west={"running": slots})[1], facts(), 0, PROFILE, scoring)
    assert full.queue_ms == pytest.approx(1000 * 200 * PROFILE.decode_step_s(slots) / slots)
    # Long typical requests fill the KV cache before the sequence slots run out.
    long = ScoringSpec(typical_prompt_tokens=9_000, typical_output_tokens=300)
    kv_slots = PROFILE.kv_capacity_tokens // 9_300
    assert kv_slots < slots
    assert estimate(regions(west={"running": kv_slots})[1], facts(), 0, PROFILE, long).queue_ms > 0


def test_each_region_is_estimated_with_its_own_profile():
    # The same queue drains ~8x faster on an H100 than on a 2-core CPU replica: a busy
    # H100 region an ocean away beats the nearest, equally busy CPU one.
    busy = {"running": 8, "waiting": 8}
    profiles = {"us-east": H100_LLAMA31_8B, "eu-west": CPU_SMOLLM2_135M}
    decision = choose(regions(east=busy, west=busy), facts(), RoutingMemory(), profiles, SCORING)
    assert decision.ranked[0] == "us-east" and decision.reason == "load"
    assert choose(regions(east=busy, west=busy), facts(), RoutingMemory(), PROFILES, SCORING).ranked[0] == "eu-west"


def test_cached_prefix_shortens_prefill_and_full_kv_cache_stretches_it():
    region = regions()[0]
    assert (
        estimate(region, facts(prompt=1000), 640, PROFILE, SCORING).prefill_ms
        < estimate(region, facts(prompt=1000), 0, PROFILE, SCORING).prefill_ms
    )
    full = regions(east={"kv_cache_usage": 0.98})[0]
    assert (
        estimate(full, facts(), 0, PROFILE, SCORING).prefill_ms
        > estimate(region, facts(), 0, PROFILE, SCORING).prefill_ms
    )


def test_prefix_affinity_holds_within_margin_only():
    memory = RoutingMemory()
    blocks = ("b1",)
    memory.record_prefixes("us-east", blocks)
    # From Paris eu-west is ~80 ms nearer; us-east's cached 64 tokens save only ~26 ms.
    # (The extra RTT counted once: the spill price has its own test below.)
    decision = choose(
        regions(),
        facts(prompt=256, blocks=blocks),
        memory,
        PROFILES,
        ScoringSpec(affinity_margin_ms=150, spill_rtt_factor=1.0),
    )
    assert decision.ranked[0] == "us-east" and decision.reason == "affinity"
    no_margin = ScoringSpec(affinity_margin_ms=0, spill_rtt_factor=1.0)
    strict = choose(regions(), facts(prompt=256, blocks=blocks), memory, PROFILES, no_margin)
    assert strict.ranked[0] == "eu-west"


def test_session_sticks_within_margin():
    memory = RoutingMemory()
    answered(memory, "us-east", facts(session="conversation-7"))
    decision = choose(regions(), facts(session="conversation-7"), memory, PROFILES, ScoringSpec(affinity_margin_ms=150))
    assert decision.ranked[0] == "us-east" and decision.reason == "session"
    # A session pinned to a region that is now drowning moves.
    drowning = regions(east={"running": 16, "waiting": 200})
    assert choose(drowning, facts(session="conversation-7"), memory, PROFILES, SCORING).ranked[0] == "eu-west"


def test_hysteresis_keeps_a_near_tie_where_it_was():
    memory = RoutingMemory()
    cell = (45, -40)  # mid-Atlantic: both regions about equally far
    middle = LatLon(46.0, -41.5)
    first = choose(regions(), facts(client=middle, cell=cell), memory, PROFILES, SCORING)
    memory.remember(first.ranked[0], facts(client=middle, cell=cell), first)
    other = first.ranked[1]
    # The first choice gets 25 ms slower: less than the hysteresis, so no flap.
    nudged = regions(**{("east" if first.ranked[0] == "us-east" else "west"): {"rtt_correction_ms": 25.0}})
    assert (
        choose(nudged, facts(client=middle, cell=cell), memory, PROFILES, ScoringSpec(hysteresis_ms=50)).ranked[0]
        != other
    )
    assert (
        choose(nudged, facts(client=middle, cell=cell), memory, PROFILES, ScoringSpec(hysteresis_ms=0)).ranked[0]
        == other
    )


def test_no_regions_no_decision():
    assert choose([], facts(), RoutingMemory(), PROFILES, SCORING) is None


def test_prefix_index_matches_leading_blocks_only():
    index = PrefixIndex(capacity_blocks=10)
    index.record("a", ["x1", "x2", "x3"])
    assert index.cached_blocks("a", ["x1", "x2", "y3"]) == 2
    assert index.cached_blocks("a", ["y1", "x2"]) == 0
    assert index.cached_blocks("b", ["x1"]) == 0


def test_prefix_index_forgets_least_recently_used():
    index = PrefixIndex(capacity_blocks=2)
    index.record("a", ["x1"])
    index.record("a", ["x2"])
    index.record("a", ["x3"])
    assert index.cached_blocks("a", ["x1"]) == 0
    assert index.cached_blocks("a", ["x3"]) == 1


def test_rtt_corrector_learns_the_residual():
    corrector = RttCorrector(alpha=0.5)
    for _ in range(20):
        predicted = 100.0 + corrector.correction_for("r", now=0.0)
        corrector.observe("r", predicted, observed_ms=160.0, now=0.0)
    assert corrector.correction_for("r", now=0.0) == pytest.approx(60.0, abs=0.1)
    corrector.observe("r", float("nan"), 1.0, now=0.0)  # ignored
    assert corrector.correction_for("r", now=0.0) == pytest.approx(60.0, abs=0.1)


def test_one_slow_observation_moves_a_correction_a_bounded_step_and_corrections_fade():
    corrector = RttCorrector(max_step_ms=100.0, half_life_s=300.0)
    for _ in range(30):
        corrector.observe("eu-west", 50.0 + corrector.correction_for("eu-west", 0.0), observed_ms=4.0, now=0.0)
    settled = corrector.correction_for("eu-west", 0.0)
    assert settled == pytest.approx(-46.0, abs=1.0)
    # A client uploading slowly makes one request look 600 ms slower than it was.
    corrector.observe("eu-west", 50.0 + settled, observed_ms=650.0, now=0.0)
    assert corrector.correction_for("eu-west", 0.0) - settled <= 100.0
    assert corrector.correction_for("eu-west", 300.0) == pytest.approx(corrector.correction_for("eu-west", 0.0) / 2)
    assert abs(corrector.correction_for("eu-west", 3600.0)) < 1.0


def test_prefix_blocks_share_leading_blocks_only():
    from geo_router.live.prompt import BLOCK_BYTES, prefix_blocks

    system = "s" * (2 * BLOCK_BYTES)
    a = prefix_blocks(system + "question one " * 50)
    b = prefix_blocks(system + "question two " * 50)
    assert a[:2] == b[:2] and a[2] != b[2]
    assert prefix_blocks("short") == ()
    assert len(prefix_blocks("x" * (BLOCK_BYTES * 3 + 10))) == 3
    assert len(prefix_blocks("é" * BLOCK_BYTES)) == 2  # blocks of UTF-8 bytes, as the front counts


def test_an_unobserved_region_inherits_the_fleet_correction():
    corrector = RttCorrector()
    for _ in range(100):  # a slow engine, not a slow path
        corrector.observe("us-east", 50.0 + corrector.correction_for("us-east", 0.0), observed_ms=550.0, now=0.0)
    assert corrector.correction_for("us-east", 0.0) == pytest.approx(500.0, abs=1.0)
    assert corrector.correction_for("eu-west", 0.0) == pytest.approx(500.0, abs=1.0)
    memory = RoutingMemory()
    load = [
        RegionLoad("us-east", ASHBURN, 1, rtt_correction_ms=corrector.correction_for("us-east", 0.0)),
        RegionLoad("eu-west", DUBLIN, 1, rtt_correction_ms=corrector.correction_for("eu-west", 0.0)),
    ]
    assert choose(load, facts(client=BOSTON), memory, PROFILES, SCORING).ranked[0] == "us-east"  # still the nearer one


def test_a_cold_nearest_region_spills_to_a_warm_one():
    cold = {"ready_replicas": 0, "cold_start_ms": 60_000.0}
    decision = choose(regions(west=cold), facts(), RoutingMemory(), PROFILES, SCORING)
    assert decision.ranked == ("us-east", "eu-west") and decision.reason == "spill"


def test_a_region_about_to_be_ready_is_held_for_when_that_is_sooner():
    # eu-west's replica is 30 ms from ready; crossing the Atlantic costs more than that.
    nearly = {"ready_replicas": 0, "cold_start_ms": 30.0}
    decision = choose(regions(west=nearly), facts(), RoutingMemory(), PROFILES, SCORING)
    assert decision.ranked[0] == "eu-west" and decision.reason == "hold"
    # The same start with the warm region queued deep: still hold, by a wider margin.
    assert (
        choose(regions(east={"waiting": 200}, west=nearly), facts(), RoutingMemory(), PROFILES, SCORING).reason
        == "hold"
    )


def test_no_hold_longer_than_the_limit_while_a_warm_region_exists():
    cold = {"ready_replicas": 0, "cold_start_ms": 40_000.0}
    swamped = {"running": 16, "waiting": 2_000}  # slower than the cold start, by the estimate
    policy = ScoringSpec(max_hold_ms=30_000.0)
    decision = choose(regions(east=swamped, west=cold), facts(), RoutingMemory(), PROFILES, policy)
    assert decision.ranked == ("us-east", "eu-west") and decision.reason == "spill"


def test_every_region_cold_means_wait_for_the_soonest_never_nothing():
    east = {"ready_replicas": 0, "cold_start_ms": 90_000.0}
    west = {"ready_replicas": 0, "cold_start_ms": 120_000.0}
    decision = choose(regions(east=east, west=west), facts(), RoutingMemory(), PROFILES, ScoringSpec(max_hold_ms=1_000))
    assert decision.ranked == ("us-east", "eu-west") and decision.reason == "hold"


GPU_PROFILES = {"us-east": H100_LLAMA31_8B, "eu-west": H100_LLAMA31_8B}


def _home_and_away(waiting: int, scoring: ScoringSpec) -> tuple[RouteDecision, float, float]:
    """A Paris client whose nearest region (eu-west) has `waiting` requests queued; us-east idle.
    Returns the decision, the queue wait eu-west's estimate adds and the RTT us-east adds."""
    fleet = regions(west={"running": 1, "waiting": waiting})
    decision = choose(fleet, facts(), RoutingMemory(), GPU_PROFILES, scoring)
    by_name = {e.region: e for e in decision.estimates}
    saved = by_name["eu-west"].queue_ms - by_name["us-east"].queue_ms
    added = by_name["us-east"].rtt_ms - by_name["eu-west"].rtt_ms
    return decision, saved, added


def test_an_idle_fleet_stays_nearest_whatever_the_spill_price():
    for factor in (1.0, 4.0, 10.0):
        decision = choose(regions(), facts(), RoutingMemory(), PROFILES, ScoringSpec(spill_rtt_factor=factor))
        assert decision.ranked[0] == "eu-west" and decision.reason == "nearest"


def test_spills_only_when_the_wait_saved_exceeds_the_rtt_added_times_the_factor():
    scoring = ScoringSpec(spill_rtt_factor=3.0)
    # The estimate's queue per request waiting: ~33 ms on an H100, fine steps against ~80 ms of RTT.
    per_waiting = 1000 * H100_LLAMA31_8B.prefill_s(scoring.typical_prompt_tokens, 1)
    added = _home_and_away(0, scoring)[2]
    # The smallest queue whose wait exceeds 3× the RTT to us-east (one profile: prefill cancels).
    threshold = math.floor(3.0 * added / per_waiting) + 1
    below, saved_below, _ = _home_and_away(threshold - 1, scoring)
    above, saved_above, _ = _home_and_away(threshold, scoring)
    assert added < saved_below <= 3.0 * added  # it would pay once, not three times: stay home
    assert below.ranked[0] == "eu-west" and below.reason == "nearest"
    assert saved_above > 3.0 * added and above.ranked[0] == "us-east" and above.reason == "load"
    # Counted once (factor 1), the same smaller queue already sends the request away.
    assert _home_and_away(threshold - 1, ScoringSpec(spill_rtt_factor=1.0))[0].ranked[0] == "us-east"


def test_a_session_keeps_its_far_region_while_its_ttft_is_within_the_margin():
    memory = RoutingMemory()
    answered(memory, "us-east", facts(session="s"))
    scoring = ScoringSpec(spill_rtt_factor=4.0)
    decision = choose(regions(), facts(session="s"), memory, PROFILES, scoring)
    by_name = {e.region: e for e in decision.estimates}
    extra = by_name["us-east"].ttft_ms - by_name["eu-west"].ttft_ms
    assert extra > scoring.affinity_margin_ms and decision.ranked[0] == "eu-west"  # too far: it moves
    near_memory = RoutingMemory()
    answered(near_memory, "us-east", facts(client=MID_ATLANTIC, session="s"))
    near = choose(regions(), facts(client=MID_ATLANTIC, session="s"), near_memory, PROFILES, scoring)
    assert near.ranked[0] == "us-east" and near.reason == "session"


def test_a_prefix_cached_far_away_pulls_only_within_the_margin_of_the_spill_priced_cost():
    memory = RoutingMemory()
    answered(memory, "us-east", facts(blocks=(1, 2)))
    request = facts(prompt=200, blocks=(1, 2))  # 128 of its 200 tokens cached in us-east
    counted_once = choose(regions(), request, memory, PROFILES, ScoringSpec(spill_rtt_factor=1.0))
    by_name = {e.region: e for e in counted_once.estimates}
    assert by_name["us-east"].ttft_ms - by_name["eu-west"].ttft_ms <= SCORING.affinity_margin_ms
    assert counted_once.ranked[0] == "us-east" and counted_once.reason == "affinity"
    priced = choose(regions(), request, memory, PROFILES, ScoringSpec(spill_rtt_factor=4.0))
    assert priced.ranked[0] == "eu-west" and priced.reason == "nearest"


def _spill_rates(scoring: ScoringSpec, requests: int = 2000) -> tuple[float, float, float]:
    """Paris clients while eu-west's queue would have them wait longer than crossing to
    us-east, answered where the scorer sends them: (spilled fraction, mean RTT added, the
    mean RTT added the budget allows), in the scorer's own RTT estimates."""
    memory, spilled, added, allowed = RoutingMemory(), 0, 0.0, 0.0
    overloaded = regions(west={"running": 16, "waiting": 40})
    for _ in range(requests):
        decision = choose(overloaded, facts(), memory, PROFILES, scoring)
        memory.remember(decision.ranked[0], facts(), decision)
        spilled += decision.ranked[0] == "us-east"
        added += decision.extra_rtt_ms(decision.ranked[0])
        allowed += decision.rtt_allowance_ms
    return spilled / requests, added / requests, allowed / requests


def test_spills_stop_where_the_mean_rtt_budget_is_spent():
    scoring = ScoringSpec(mean_rtt_budget=0.5)
    spilled, added, allowed = _spill_rates(scoring)
    # Each spill adds ~2x eu-west's RTT: a budget of half its RTT spills about one in four.
    assert 0.05 < spilled < 0.5
    assert added <= 1.05 * allowed
    # With room for every spill, every request spills: the budget is what held them.
    assert _spill_rates(ScoringSpec(mean_rtt_budget=10.0))[0] == 1.0


def test_the_spill_markup_moves_by_the_overspend_and_holds_where_spills_spend_the_allowance():
    price = SpillPrice(window=10, step=0.1)
    for _ in range(200):  # within the allowance: the markup stays at 1
        price.observe(extra_ms=0.0, allowance_ms=10.0)
    assert price.markup == 1.0
    price.observe(extra_ms=30.0, allowance_ms=10.0)  # two allowances over
    assert price.markup == pytest.approx(math.exp(0.1 * 2), rel=1e-6)
    raised = price.markup
    for _ in range(10):  # one spill of 50 ms in five answers: 10 ms each on average
        price.observe(extra_ms=50.0, allowance_ms=10.0)
        for _ in range(4):
            price.observe(extra_ms=0.0, allowance_ms=10.0)
    assert price.markup == pytest.approx(raised, rel=1e-6)
    price.observe(extra_ms=1e6, allowance_ms=10.0)  # one answer moves it by e^0.5 at most
    assert price.markup == pytest.approx(raised * math.exp(0.5), rel=1e-6)


@pytest.mark.parametrize("profile", [CPU_SMOLLM2_135M, H100_LLAMA31_8B], ids=lambda p: p.name)
@pytest.mark.parametrize(("running", "waiting", "prompt"), [(0, 0, 1), (3, 0, 700), (5, 9, 4096), (300, 40, 20_000)])
def test_the_compiled_estimate_times_replicas_by_the_python_replica_model(profile, running, waiting, prompt):
    """routing_core computes prefill and decode times itself; they must be the replica
    model's (meridian_core/replica_model.py), to the bit, or the two have drifted apart."""
    region = RegionLoad("r", DUBLIN, ready_replicas=1, running=running, waiting=waiting)
    got = estimate(region, facts(prompt=prompt), 0, profile, SCORING)
    typical = SCORING.typical_prompt_tokens + SCORING.typical_output_tokens
    slots = max(1, min(profile.max_num_seqs, profile.kv_capacity_tokens // typical))
    slot_wait_s = (
        max(0.0, running + waiting + 1 - slots) * SCORING.typical_output_tokens * profile.decode_step_s(slots) / slots
    )
    prefill_ahead_s = waiting * profile.prefill_s(SCORING.typical_prompt_tokens, running)
    assert got.prefill_ms == 1000.0 * profile.prefill_s(prompt, running)
    assert got.queue_ms == 1000.0 * max(prefill_ahead_s, slot_wait_s)


def test_the_compiled_rtt_is_the_python_network_model():
    region = RegionLoad("r", DUBLIN, ready_replicas=1, rtt_correction_ms=-3.5)
    got = estimate(region, facts(client=PARIS), 0, PROFILE, SCORING)
    assert got.rtt_ms == prior_rtt_ms(haversine_km(PARIS, DUBLIN)) - 3.5


def test_a_region_without_a_profile_is_a_key_error_naming_it():
    with pytest.raises(KeyError, match="eu-west"):
        choose(regions(), facts(), RoutingMemory(), {"us-east": PROFILE}, SCORING)
