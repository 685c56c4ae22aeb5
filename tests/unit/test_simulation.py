import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geo_router.sim.routing_replay import (
    Replica,
    SimRegion,
    TraceRequest,
    World,
    client_of,
    compare_policies,
    load_mooncake,
    meridian_policy,
    nearest_policy,
    percentile,
    simulate,
)
from meridian.cli import app
from meridian_core.geo import LatLon
from meridian_core.replica_model import ReplicaProfile
from meridian_core.spec import ScoringSpec, load_spec

from ..conftest import REPO

MOONCAKE = REPO.parent / "shared" / "data" / "traces" / "mooncake_conversation.jsonl"
SIM_GLOBAL = REPO / "configs" / "sim-global.yaml"
# Prefill at 20,000 tokens/s, a flat 20 ms decode step, two sequences at a time.
PROFILE = ReplicaProfile(
    name="test",
    accelerator="test",
    usd_per_gpu_hour=1.0,
    prefill_tokens_per_s=20_000,
    decode_base_s=0.02,
    decode_per_seq_s=0.0,
    kv_capacity_tokens=1_000_000,
    max_num_seqs=2,
    max_batched_tokens=8192,
    cold_start_s=60.0,
)
REGIONS = [SimRegion("east", LatLon(39.04, -77.49), 1, PROFILE), SimRegion("tokyo", LatLon(35.68, 139.65), 1, PROFILE)]
CACHE_BLOCKS = 100


def burst(n: int, blocks=(1, 2, 3)) -> list[TraceRequest]:
    return [
        TraceRequest(arrival_ms=i * 10.0, input_tokens=1536, output_tokens=100, blocks=tuple(blocks)) for i in range(n)
    ]


def test_clients_of_a_conversation_come_from_one_place_and_others_spread():
    a = TraceRequest(0, 100, 10, (0, 8))
    b = TraceRequest(5000, 900, 10, (0, 8, 10))
    assert client_of(a) == client_of(b)
    # Every request shares block 0 (a system prompt), yet clients spread over the world.
    assert len({client_of(TraceRequest(0, 100, 10, (0, i))) for i in range(200)}) >= 10


def test_second_request_with_the_same_prefix_hits_the_replica_cache():
    result = simulate("nearest", nearest_policy(), burst(2), REGIONS, CACHE_BLOCKS)
    assert result.cache_hit_rate == pytest.approx(0.5)  # 3 of 6 blocks were cached
    assert result.spill_rate == 0.0


def test_queueing_shows_in_ttft_when_slots_run_out():
    light = simulate("nearest", nearest_policy(), burst(2), REGIONS, CACHE_BLOCKS)
    heavy = simulate("nearest", nearest_policy(), burst(12), REGIONS, CACHE_BLOCKS)
    assert heavy.ttft_p99_ms > light.ttft_p99_ms + 1000  # 100 tokens x 20 ms hold a slot for 2 s


def test_a_replica_serves_by_its_profile():
    replica = Replica("east", 0, PROFILE)
    first = TraceRequest(0.0, 2000, 11, (1, 2, 3, 4))
    # Prefill 2,000 tokens at 20,000 tokens/s in one 20 ms step: 100 + 20 ms.
    assert replica.serve(first, 0.0, CACHE_BLOCKS) == (pytest.approx(120.0), 0)
    # Prefill is first come, first served: a second arrival waits for the first's, and
    # its own then shares each step with the first's decode (no per-sequence cost here).
    second = TraceRequest(0.0, 2000, 11, (5, 6, 7, 8))
    assert replica.serve(second, 0.0, CACHE_BLOCKS) == (pytest.approx(240.0), 0)
    # Both sequence slots are taken until the first ends (120 + 10 steps of 20 ms = 320 ms);
    # its cached blocks (3 of 512 tokens) leave 464 tokens to prefill: 23.2 + 20 ms.
    third = TraceRequest(0.0, 2000, 11, (1, 2, 3, 9))
    ttft, cached = replica.serve(third, 250.0, CACHE_BLOCKS)
    assert cached == 3
    assert ttft == pytest.approx(320.0 + 43.2 - 250.0)


def test_a_request_waits_for_room_in_the_kv_cache():
    small_cache = PROFILE.model_copy(update={"kv_capacity_tokens": 3_000, "max_num_seqs": 256})
    replica = Replica("east", 0, small_cache)
    replica.serve(TraceRequest(0.0, 2000, 11, (1,)), 0.0, CACHE_BLOCKS)  # holds 2,011 tokens until 320 ms
    ttft, _ = replica.serve(TraceRequest(0.0, 1000, 11, (2,)), 200.0, CACHE_BLOCKS)
    assert ttft == pytest.approx(320.0 + 50.0 + 20.0 - 200.0)


def test_meridian_spills_a_burst_that_nearest_queues():
    scoring = ScoringSpec(typical_prompt_tokens=1536, typical_output_tokens=100)
    results = {r.policy: r for r in compare_policies(burst(12), REGIONS, CACHE_BLOCKS, scoring)}
    assert set(results) == {"nearest", "least-load", "prefix-aware-in-region", "meridian"}
    assert results["meridian"].spill_rate > 0
    assert results["meridian"].ttft_p99_ms < results["nearest"].ttft_p99_ms


def test_meridian_keeps_a_prefix_on_its_replica_as_the_regions_ingress_does_live():
    """Two requests with one prefix, 10 ms apart, to a region of two replicas. Live, the
    region's ingress asks the replica-affinity router, which keeps the second on the
    replica holding its prefix though the other is idle, and so does the simulator for
    Meridian; the nearest-only peer's ingress (HAProxy's leastconn) gives it to the idle one."""

    def replicas_chosen(policy) -> list[int]:
        world = World([SimRegion("east", LatLon(39.04, -77.49), 2, PROFILE)])
        chosen = []
        for request in burst(2):
            replica = policy(world, request, LatLon(40.7, -74.0))
            replica.serve(request, request.arrival_ms, CACHE_BLOCKS)
            chosen.append(replica.index)
        return chosen

    assert replicas_chosen(meridian_policy(ScoringSpec())) == [0, 0]
    assert replicas_chosen(nearest_policy()) == [0, 1]


def test_percentile():
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 50) == 5.0


def write_trace(path: Path) -> Path:
    path.write_text(
        "\n".join(
            json.dumps({"timestamp": i * 100, "input_length": 1000, "output_length": 50, "hash_ids": [i % 3, 100 + i]})
            for i in range(40)
        )
    )
    return path


def simulate_routing(trace: Path, *options: str) -> list[dict]:
    result = CliRunner().invoke(
        app,
        ["simulate", "routing", "--trace", str(trace), "--regions", str(SIM_GLOBAL), *options, "--json"],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_cli_json_shape(tmp_path):
    rows = simulate_routing(write_trace(tmp_path / "trace.jsonl"))
    assert [row["policy"] for row in rows] == ["nearest", "least-load", "prefix-aware-in-region", "meridian"]
    for row in rows:
        assert {"policy", "ttft_mean_ms", "ttft_p99_ms", "cache_hit_rate", "spill_rate"} <= set(row)
        assert row["requests"] == 40


def test_cli_replicas_serve_by_the_profile_named_or_the_regions_own(tmp_path):
    trace = write_trace(tmp_path / "trace.jsonl")
    declared = {r.profile for r in load_spec(SIM_GLOBAL).regions}
    assert declared == {"llama-3.1-8b-h100"}
    assert simulate_routing(trace) == simulate_routing(trace, "--profile", "llama-3.1-8b-h100")
    # A 2-core CPU replica prefills a 1,000-token prompt in ~450 ms, an H100 in ~57: the truth moved.
    gpu = {row["policy"]: row for row in simulate_routing(trace)}
    cpu = {row["policy"]: row for row in simulate_routing(trace, "--profile", "smollm2-135m-cpu")}
    assert cpu["nearest"]["ttft_mean_ms"] > gpu["nearest"]["ttft_mean_ms"] + 300


def test_cli_refuses_an_unknown_profile(tmp_path):
    result = CliRunner().invoke(
        app, ["simulate", "routing", "--trace", str(write_trace(tmp_path / "t.jsonl")), "--profile", "tpu-v9"]
    )
    assert result.exit_code == 2
    assert "tpu-v9" in result.output and "llama-3.1-8b-h100" in result.output


@pytest.mark.skipif(not MOONCAKE.exists(), reason="shared/data is not beside the repository")
def test_mooncake_trace_loads():
    trace = load_mooncake(MOONCAKE, limit=100)
    assert len(trace) == 100
    assert all(len(r.blocks) == -(-r.input_tokens // 512) for r in trace)
