"""Run the routing evaluation suite (geo_router/sim/routing_suite.py) under every routing
policy; write benchmarks/results/routing_simulation.md from that one run.

    .venv/bin/python benchmarks/routing_sim.py [--quick] [--requests N] [--trace PATH] [--profile NAME]

Cells: arrival pattern {trace, poisson} × regions {3, 5, 8} × load {0.3, 0.6, 0.9} ×
cache blocks per replica {250, 500, 2000, 8000}; `--quick` runs 3 and 8 regions at 250
and 8000 blocks. Every policy runs in every cell; Meridian with the
`router.scoring` of configs/sim-global.yaml (its typical prompt is the Mooncake trace's
size; the rest are the spec's defaults), one configuration for the whole suite. The replicas serve by the
profile named (the simulator's truth, which Meridian's policy also estimates with): by
default `llama-3.1-8b-h100`, since the Mooncake trace was served on GPUs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

from geo_router.sim.routing_replay import TraceRequest, load_mooncake  # noqa: E402
from geo_router.sim.routing_suite import (  # noqa: E402
    ARRIVALS,
    REPLICAS_PER_REGION,
    Cell,
    CellResult,
    Site,
    choose_sites,
    load_sites,
    provision,
    run_cell,
)
from meridian_core.replica_model import H100_LLAMA31_8B, PROFILES, ReplicaProfile  # noqa: E402
from meridian_core.shared_data import MOONCAKE_TRACE, SHARED_DATA_DIR  # noqa: E402
from meridian_core.spec import ScoringSpec, load_spec  # noqa: E402

REGION_LIST = SHARED_DATA_DIR / "regions" / "regions.csv"
SCORING_SPEC = REPO / "configs" / "sim-global.yaml"  # its router.scoring: the workload the policy assumes
RTT_LIMIT = 1.10  # Meridian's mean RTT at most this times nearest-only's


def cells(quick: bool) -> list[Cell]:
    regions, caches = ((3, 8), (250, 8000)) if quick else ((3, 5, 8), (250, 500, 2000, 8000))
    return [Cell(*values) for values in itertools.product(ARRIVALS, regions, (0.3, 0.6, 0.9), caches)]


def verdict(result: CellResult) -> dict[str, bool | str]:
    rows = {row.policy: row for row in result.results}
    meridian, nearest = rows["meridian"], rows["nearest"]
    others = [row for row in result.results if row.policy != "meridian"]
    best_mean = min(others, key=lambda row: row.ttft_mean_ms)
    best_p99 = min(others, key=lambda row: row.ttft_p99_ms)
    return {
        "mean": meridian.ttft_mean_ms < best_mean.ttft_mean_ms,
        "p99": meridian.ttft_p99_ms < best_p99.ttft_p99_ms,
        "rtt": meridian.mean_rtt_ms <= RTT_LIMIT * nearest.mean_rtt_ms,
        "best_mean": best_mean.policy,
        "best_p99": best_p99.policy,
    }


def why(result: CellResult, checks: dict[str, bool | str]) -> str:
    """What the cell measured where Meridian misses a goal."""
    rows = {row.policy: row for row in result.results}
    meridian, nearest = rows["meridian"], rows["nearest"]
    notes = []
    if not checks["mean"]:
        peer = rows[str(checks["best_mean"])]
        notes.append(
            f"mean {meridian.ttft_mean_ms:.0f} vs {peer.policy} {peer.ttft_mean_ms:.0f} ms "
            f"(spill {meridian.spill_rate:.0%} vs {peer.spill_rate:.0%}, "
            f"RTT ×{peer.mean_rtt_ms / nearest.mean_rtt_ms:.2f})"
        )
    if not checks["p99"]:
        peer = rows[str(checks["best_p99"])]
        notes.append(f"p99 {meridian.ttft_p99_ms:.0f} vs {peer.policy} {peer.ttft_p99_ms:.0f} ms")
    if not checks["rtt"]:
        notes.append(f"RTT ×{meridian.mean_rtt_ms / nearest.mean_rtt_ms:.2f} at spill {meridian.spill_rate:.0%}")
    if not (checks["mean"] and checks["p99"]):
        lifted = result.meridian_without_rtt_bound
        notes.append(
            f"without its RTT bound: mean {lifted.ttft_mean_ms:.0f}, p99 {lifted.ttft_p99_ms:.0f} ms "
            f"at RTT ×{lifted.mean_rtt_ms / nearest.mean_rtt_ms:.2f}"
            + (", lowest of all" if wins_without_rtt_bound(result) else "")
        )
    return "; ".join(notes)


def wins_without_rtt_bound(result: CellResult) -> bool:
    """Whether Meridian's scorer, its RTT bound lifted, has the lowest mean and p99 of all policies."""
    lifted = result.meridian_without_rtt_bound
    others = [row for row in result.results if row.policy != "meridian"]
    return lifted.ttft_mean_ms < min(row.ttft_mean_ms for row in others) and lifted.ttft_p99_ms < min(
        row.ttft_p99_ms for row in others
    )


def fleet_lines(sites: list[Site], trace: list[TraceRequest], profile: ReplicaProfile, counts: set[int]) -> list[str]:
    return [
        f"- {count} regions: "
        + ", ".join(f"{r.name} ×{r.replicas}" for r in provision(choose_sites(sites, count), trace, profile))
        for count in sorted(counts)
    ]


def cell_name(cell: Cell) -> str:
    return f"{cell.arrivals} | {cell.regions} | {cell.load:g} | {cell.cache_blocks}"


def render(header: list[str], fleets: list[str], results: list[CellResult], scoring: ScoringSpec, requests: int) -> str:
    lines = [
        *header,
        "",
        "Meridian's `router.scoring` (configs/sim-global.yaml's, one configuration for every cell): "
        + ", ".join(f"`{key}` {value:g}" for key, value in scoring.model_dump().items())
        + f". {requests:,} requests a cell. Fleets ({REPLICAS_PER_REGION} replicas a region on average):",
        "",
        *fleets,
        "",
        "## Goal: lowest mean and p99 TTFT of all policies, mean RTT ≤ 1.10× nearest-only",
        "",
        "| arrivals | regions | load | cache blocks | lowest mean | lowest p99 | RTT ≤ 1.10× "
        "| where it loses, measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tally = {"mean": 0, "p99": 0, "rtt": 0, "all": 0, "lost": 0, "lifted": 0}
    for result in results:
        checks = verdict(result)
        met = {key: bool(checks[key]) for key in ("mean", "p99", "rtt")}
        for key, value in met.items():
            tally[key] += value
        tally["all"] += all(met.values())
        if not (met["mean"] and met["p99"]):
            tally["lost"] += 1
            tally["lifted"] += wins_without_rtt_bound(result)
        marks = " | ".join("yes" if met[key] else "no" for key in ("mean", "p99", "rtt"))
        lines.append(f"| {cell_name(result.cell)} | {marks} | {why(result, checks)} |")
    total = len(results)
    lines += [
        "",
        f"Met in {tally['all']} of {total} cells (lowest mean {tally['mean']}, lowest p99 {tally['p99']}, "
        f"RTT within 10% {tally['rtt']}).",
        "",
        f"Where it loses on TTFT ({tally['lost']} cells), the same scorer with its RTT bound lifted (a spill "
        f"costs its extra RTT once, no mean RTT budget; not a contender) has the lowest mean and p99 of all in "
        f"{tally['lifted']}: there the loss is the price of the bound. In the other "
        f"{tally['lost'] - tally['lifted']} it loses unbound too.",
        "",
        "## Every policy in every cell",
        "",
        "| arrivals | regions | load | cache blocks | policy | TTFT mean ms | TTFT p99 ms | cache hit | spill "
        "| mean RTT ms | RTT vs nearest |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        nearest = next(row for row in result.results if row.policy == "nearest")
        for row in (*result.results, result.meridian_without_rtt_bound):
            lines.append(
                f"| {cell_name(result.cell)} | {row.policy} | {row.ttft_mean_ms:.0f} | {row.ttft_p99_ms:.0f} "
                f"| {row.cache_hit_rate:.1%} | {row.spill_rate:.1%} | {row.mean_rtt_ms:.1f} "
                f"| ×{row.mean_rtt_ms / nearest.mean_rtt_ms:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", type=Path, default=MOONCAKE_TRACE)
    parser.add_argument("--profile", choices=sorted(PROFILES), default=H100_LLAMA31_8B.name)
    parser.add_argument("--requests", type=int, default=None, help="the trace's first N requests (default: all)")
    parser.add_argument("--quick", action="store_true", help="3 and 8 regions, 250 and 8000 blocks")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "routing_simulation.md")
    args = parser.parse_args()
    if not args.trace.is_file():
        raise SystemExit(f"no trace at {args.trace} (pass --trace PATH)")
    began = time.monotonic()
    trace = load_mooncake(args.trace, args.requests)
    sites = load_sites(REGION_LIST)
    profile, scoring = PROFILES[args.profile], load_spec(SCORING_SPEC).router.scoring
    suite = cells(args.quick)
    run = partial(run_cell, trace=trace, sites=sites, profile=profile, scoring=scoring)
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run, suite))
    seconds = time.monotonic() - began
    command = shlex.join(["python", "benchmarks/routing_sim.py", *sys.argv[1:]])
    header = [
        "# Routing policies over the evaluation suite (simulated)",
        "",
        f"    {command}",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores, "
        f"{platform.machine()}, Python {platform.python_version()}), {seconds:.0f} s for {len(suite)} cells "
        f"with {args.workers} workers. Trace `{args.trace.name}`; regions chosen from `regions.csv` and replicas, "
        "loads and arrival patterns as `geo_router/sim/routing_suite.py` describes; the replay model is "
        f"`geo_router/sim/routing_replay.py`. Every replica serves by the `{profile.name}` profile "
        f"({profile.accelerator}, prefill {profile.prefill_tokens_per_s:,.0f} tok/s): the simulator's truth and "
        "what Meridian's policy (`geo_router/policy/scoring.py`, the live router's scorer) estimates with. "
        "Deterministic.",
    ]
    fleets = fleet_lines(sites, trace, profile, {cell.regions for cell in suite})
    args.out.write_text(render(header, fleets, results, scoring, len(trace)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
