"""Smoke tests of `meridian simulate autoscale | capacity | routing`: the whole line-up of
each, through the CLI a user runs, on small synthetic traces written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoscaler.sim import lineup
from capacity.sim.spot_replay import POLICIES as CAPACITY_POLICIES
from meridian.cli import app

REPO = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> dict | list:
    result = CliRunner().invoke(app, ["simulate", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_simulate_autoscale_runs_every_policy_over_its_sweep(tmp_path: Path) -> None:
    trace = tmp_path / "azure.csv"
    # 2 req/s of 1000-token prompts for 20 minutes: a light, steady load.
    rows = [f"2023-11-16 18:{m:02d}:{s:02d}.{h}000000,1000,20" for m in range(20) for s in range(60) for h in (0, 5)]
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    report = invoke("autoscale", "--trace", str(trace), "--warmup-s", "60")
    assert report["requests"] == len(rows)
    results = report["results"]
    assert {r["policy"] for r in results} == set(lineup.POLICIES)
    # Each peer is judged over its sweep, not one setting.
    assert sum(r["policy"] == "knative-kpa" for r in results) == len(lineup.KNATIVE_TARGETS)
    assert sum(r["policy"] == "ray-serve" for r in results) == len(lineup.RAY_TARGETS)
    assert set(report["best"]) == set(lineup.POLICIES)
    for row in results:
        assert 0.0 <= row["slo_attainment"] <= 1.0
        assert row["gpu_hours"] > 0
    # One H100 replica prefills 2,000 prompt tokens/s in a tenth of its capacity.
    assert report["best"]["meridian"]["slo_attainment"] == 1.0
    assert report["best"]["meridian"]["max_replicas"] == 1


def test_simulate_capacity_runs_every_policy(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    for zone, data in (("us-east-1a", [1] * 40 + [0] * 20 + [1] * 40), ("us-east-1b", [1] * 100)):
        (folder / f"{zone}_v100_1.json").write_text(json.dumps({"metadata": {"gap_seconds": 300}, "data": data}))
    report = invoke("capacity", "--spot-traces", str(folder), "--target", "2")
    rows = report[0]["results"]
    by_policy = {row["policy"]: row for row in rows}
    assert set(by_policy) == set(CAPACITY_POLICIES)
    assert by_policy["on_demand"]["availability"] == 1.0
    assert by_policy["on_demand"]["savings_vs_ondemand"] == 0.0
    for name in ("spothedge", "meridian"):
        assert by_policy[name]["savings_vs_ondemand"] > 0.3
        assert by_policy[name]["availability"] > 0.95
    assert report[0]["notice_s"] == {"aws": 120.0, "gcp": 30.0}

    unwarned = invoke("capacity", "--spot-traces", str(folder), "--target", "2", "--no-notices")
    assert unwarned[0]["notice_s"] == {}
    by_policy_unwarned = {row["policy"]: row for row in unwarned[0]["results"]}
    # Bought at the notice, SpotHedge's replacement is ready as the node goes; without one it is a boot late.
    assert by_policy["spothedge"]["availability"] > by_policy_unwarned["spothedge"]["availability"]


def test_simulate_routing_runs_every_policy(tmp_path: Path) -> None:
    trace = tmp_path / "mooncake.jsonl"
    lines = [
        json.dumps({"timestamp": i * 200, "input_length": 600, "output_length": 20, "hash_ids": [i % 7, i % 7 + 100]})
        for i in range(300)
    ]
    trace.write_text("\n".join(lines) + "\n")
    results = invoke("routing", "--trace", str(trace), "--regions", str(REPO / "configs" / "sim-global.yaml"))
    assert [r["policy"] for r in results] == ["nearest", "least-load", "prefix-aware-in-region", "meridian"]
    for row in results:
        assert row["ttft_mean_ms"] > 0
        assert row["ttft_p99_ms"] >= row["ttft_mean_ms"] * 0.5
        assert 0.0 <= row["cache_hit_rate"] <= 1.0
    nearest = results[0]
    # Nearest-only never pays more RTT than any other policy.
    assert all(r["mean_rtt_ms"] >= nearest["mean_rtt_ms"] - 1e-9 for r in results)


@pytest.mark.parametrize("command", ["autoscale", "capacity", "routing"])
def test_simulate_commands_name_a_missing_trace(command: str, tmp_path: Path) -> None:
    flag = "--spot-traces" if command == "capacity" else "--trace"
    result = CliRunner().invoke(app, ["simulate", command, flag, str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert "missing" in result.output
