import json

import pytest
from typer.testing import CliRunner

from geo_router.policy.scoring import PerfModel, ScoringPolicy
from geo_router.sim.routing_replay import (
    ReplicaModel,
    SimRegion,
    TraceRequest,
    client_of,
    compare_policies,
    load_mooncake,
    nearest_policy,
    percentile,
    simulate,
)
from meridian.cli import app
from meridian_core.geo import LatLon

from ..conftest import REPO

MOONCAKE = REPO.parent / "shared" / "data" / "traces" / "mooncake_conversation.jsonl"
REGIONS = [SimRegion("east", LatLon(39.04, -77.49), 1), SimRegion("tokyo", LatLon(35.68, 139.65), 1)]
MODEL = ReplicaModel(prefill_ms_per_token=0.05, decode_ms_per_token=20, batch_slots=2, cache_blocks=100)


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
    result = simulate("nearest", nearest_policy(), burst(2), REGIONS, MODEL)
    assert result.cache_hit_rate == pytest.approx(0.5)  # 3 of 6 blocks were cached
    assert result.spill_rate == 0.0


def test_queueing_shows_in_ttft_when_slots_run_out():
    light = simulate("nearest", nearest_policy(), burst(2), REGIONS, MODEL)
    heavy = simulate("nearest", nearest_policy(), burst(12), REGIONS, MODEL)
    assert heavy.ttft_p99_ms > light.ttft_p99_ms + 1000  # 100 tokens x 20 ms hold a slot for 2 s


def test_meridian_spills_a_burst_that_nearest_queues():
    results = {
        r.policy: r for r in compare_policies(burst(12), REGIONS, MODEL, PerfModel(0.05, 2, 1536), ScoringPolicy())
    }
    assert set(results) == {"nearest", "least-load", "prefix-aware-in-region", "meridian"}
    assert results["meridian"].spill_rate > 0
    assert results["meridian"].ttft_p99_ms < results["nearest"].ttft_p99_ms


def test_percentile():
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 50) == 5.0


def test_cli_json_shape(tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "\n".join(
            json.dumps({"timestamp": i * 100, "input_length": 1000, "output_length": 50, "hash_ids": [i % 3, 100 + i]})
            for i in range(40)
        )
    )
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "routing",
            "--trace",
            str(trace),
            "--regions",
            str(REPO / "configs" / "sim-global.yaml"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["policy"] for row in rows] == ["nearest", "least-load", "prefix-aware-in-region", "meridian"]
    for row in rows:
        assert {"policy", "ttft_mean_ms", "ttft_p99_ms", "cache_hit_rate", "spill_rate"} <= set(row)
        assert row["requests"] == 40


@pytest.mark.skipif(not MOONCAKE.exists(), reason="shared/data is not beside the repository")
def test_mooncake_trace_loads():
    trace = load_mooncake(MOONCAKE, limit=100)
    assert len(trace) == 100
    assert all(len(r.blocks) == -(-r.input_tokens // 512) for r in trace)
