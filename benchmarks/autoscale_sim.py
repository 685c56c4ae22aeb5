"""Meridian's autoscaler against Ray Serve, SkyServe, Knative KPA and static provisioning
on the Azure LLM code trace, and the simulator's speed at fleet scale.

    .venv/bin/python benchmarks/autoscale_sim.py

Writes benchmarks/results/autoscale.md and benchmarks/results/autoscale.png. Every
number in the report comes from this run, the machine's description included.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autoscaler.sim import lineup, traces  # noqa: E402
from autoscaler.sim.cli import SLO_GOAL, run  # noqa: E402
from autoscaler.sim.demand_replay import DemandReplayResult  # noqa: E402
from autoscaler.sim.plot import plot_results  # noqa: E402
from meridian_core import replica_model  # noqa: E402
from meridian_core.shared_data import AZURE_CODE_TRACE  # noqa: E402
from meridian_core.spec import AutoscalingSpec, SLOSpec  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SLO = SLOSpec(ttft_p95_ms=2000, itl_p95_ms=200)
WARMUP_S = 600.0
AUTOSCALING = AutoscalingSpec(min_replicas=1, max_replicas=512)


def _row(result: DemandReplayResult, best: dict[str, DemandReplayResult]) -> str:
    mark = " **★**" if best.get(result.policy) is result else ""
    return (
        f"| {result.policy} | {result.setting}{mark} | {result.slo_attainment:.2%} | {result.gpu_hours:.2f} |"
        f" {result.cost_usd:.2f} | {result.max_replicas} | {result.ttft_p95_s:.2f} | {result.itl_p95_s * 1000:.0f} |"
    )


def goal_verdict(best: dict[str, DemandReplayResult]) -> list[str]:
    meridian = best.get("meridian")
    peers = {n: r for n, r in best.items() if n != "meridian" and r.slo_attainment >= SLO_GOAL}
    lines = []
    if meridian is None:
        return ["Meridian was not run."]
    met_slo = meridian.slo_attainment >= SLO_GOAL
    lines.append(
        f"- Meridian's best setting ({meridian.setting}): {meridian.slo_attainment:.2%} SLO attainment, "
        f"{meridian.gpu_hours:.2f} GPU-hours — the {SLO_GOAL:.0%} attainment goal is "
        f"**{'met' if met_slo else 'NOT met'}**."
    )
    if peers:
        name, cheapest = min(peers.items(), key=lambda item: item[1].gpu_hours)
        saving = 1.0 - meridian.gpu_hours / cheapest.gpu_hours
        met_cost = met_slo and saving >= 0.30
        lines.append(
            f"- Cheapest baseline reaching {SLO_GOAL:.0%}: {name} ({cheapest.setting}), "
            f"{cheapest.gpu_hours:.2f} GPU-hours. Meridian uses {abs(saving):.1%} "
            f"{'fewer' if saving >= 0 else 'more'} GPU-hours "
            f"(goal: ≥ 30% fewer at ≥ {SLO_GOAL:.0%}) — **{'met' if met_cost else 'NOT met'}**."
        )
    else:
        lines.append(f"- No baseline setting reached {SLO_GOAL:.0%}.")
    return lines


def window_loads(
    trace: traces.Trace, profile: replica_model.ReplicaProfile, bin_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Replicas the trace's prefill work keeps busy in each `bin_s` window after the warm-up,
    and the window of every request counted."""
    counted = trace.arrival_s >= WARMUP_S
    index = ((trace.arrival_s[counted] - WARMUP_S) // bin_s).astype(np.int64)
    load = np.bincount(index, weights=trace.prompt_tokens[counted]) / bin_s / profile.prefill_tokens_per_s
    return load, index


def bursts(over: np.ndarray, index: np.ndarray, bin_s: float) -> dict[str, float]:
    """Runs of consecutive `over` windows: how many, how long, the gaps between them, and
    the share of the requests (their windows: `index`) arriving in them."""
    edges = np.diff(np.concatenate(([0], over.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths, gaps = (ends - starts) * bin_s, (starts[1:] - ends[:-1]) * bin_s
    return {
        "count": len(lengths),
        "longest_s": float(lengths.max()) if len(lengths) else 0.0,
        "median_s": float(np.median(lengths)) if len(lengths) else 0.0,
        "median_gap_s": float(np.median(gaps)) if len(gaps) else float("nan"),
        "request_share": float(over[index].mean()) if len(index) else 0.0,
    }


def burst_lines(trace: traces.Trace, profile: replica_model.ReplicaProfile, bin_s: float) -> list[str]:
    """What the trace's prefill work asks of the replicas, window by window, as measured here."""
    load, index = window_loads(trace, profile, bin_s)
    p99 = float(np.percentile(load[index], 99))
    lines = [
        f"The trace's prefill work, in {bin_s:g}-second windows (the TTFT SLO) after the warm-up, keeps "
        f"{load.mean():.2f} replicas busy on average; the window of the 99th-percentile request needs "
        f"{p99:.1f}, the busiest {load.max():.1f}. A replica takes {profile.cold_start_s:g} s to start.",
        "",
    ]
    for over, name in ((load > 1.0, "more than one replica"), (load >= p99, f"{p99:.1f} replicas or more")):
        runs = bursts(over, index, bin_s)
        if not runs["count"]:
            lines.append(f"- No window needs {name}.")
            continue
        versus = "shorter than" if runs["longest_s"] < profile.cold_start_s else "at least as long as"
        gap = f", median gap between runs {runs['median_gap_s']:g} s" if runs["count"] > 1 else ""
        lines.append(
            f"- Windows needing {name}: {runs['count']} run{'s' if runs['count'] != 1 else ''} of consecutive "
            "windows holding "
            f"{runs['request_share']:.1%} of the counted requests; median run {runs['median_s']:g} s, longest "
            f"{runs['longest_s']:g} s ({versus} a cold start){gap}."
        )
    return lines


def machine_line() -> str:
    """This machine as read now: CPUs, memory, and how busy it was."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB memory"
    except (ValueError, OSError, AttributeError):
        memory = ""
    try:
        load = f", 1-minute load average {os.getloadavg()[0]:.2f} at the start"
    except OSError:
        load = ""
    return f"{os.cpu_count()} CPUs ({usable} usable by the run){memory}{load}"


def _repo_relative(path: str) -> str:
    """`path` as typed from the repository's root (where the commands are run)."""
    return os.path.relpath(Path(path).absolute(), REPO)


def autoscaler_verdict(best: dict[str, DemandReplayResult]) -> str:
    """Meridian against the autoscaling peers alone (static provisioning left out)."""
    meridian = best.get("meridian")
    peers = {n: r for n, r in best.items() if n not in ("meridian", "static") and r.slo_attainment >= SLO_GOAL}
    if meridian is None or not peers:
        return f"- No autoscaling peer reached {SLO_GOAL:.0%}."
    name, cheapest = min(peers.items(), key=lambda item: item[1].gpu_hours)
    saving = 1.0 - meridian.gpu_hours / cheapest.gpu_hours
    return (
        f"- Against the autoscaling peers alone: the cheapest reaching {SLO_GOAL:.0%} is {name} "
        f"({cheapest.setting}, {cheapest.gpu_hours:.2f} GPU-hours); Meridian, at "
        f"{meridian.slo_attainment:.2%}, uses {abs(saving):.1%} {'fewer' if saving >= 0 else 'more'}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", type=Path, default=AZURE_CODE_TRACE)
    parser.add_argument("--fleet-scale", type=int, default=100, help="copies for the fleet-scale timing run")
    args = parser.parse_args()
    if not args.trace.is_file():
        sys.exit(f"no trace at {args.trace}")
    command = shlex.join([_repo_relative(sys.executable), _repo_relative(sys.argv[0]), *sys.argv[1:]])
    run_at, machine = datetime.now(UTC), machine_line()
    profile = replica_model.H100_LLAMA31_8B
    slo_ttft_s = SLO.ttft_p95_ms / 1000.0
    trace = traces.load(args.trace, "azure")

    began = time.perf_counter()
    results = run(
        trace,
        list(lineup.POLICIES),
        profile,
        AUTOSCALING,
        SLO,
        WARMUP_S,
        show_progress=True,
    )
    sweep_s = time.perf_counter() - began
    best = lineup.best_settings(results, SLO_GOAL)
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / "autoscale.png"
    plot_results(
        [best[n] for n in lineup.POLICIES if n in best],
        png,
        f"{args.trace.name}, {profile.name}, SLO TTFT {slo_ttft_s:g} s / ITL {SLO.itl_p95_ms:g} ms; best settings",
    )

    fleet = traces.superpose(trace, args.fleet_scale)
    began = time.perf_counter()
    meridian_fleet = run(fleet, ["meridian"], profile, AUTOSCALING, SLO, WARMUP_S, show_progress=True)
    per_run_s = (time.perf_counter() - began) / len(meridian_fleet)
    peers_fleet = run(
        fleet,
        [name for name in lineup.POLICIES if name != "meridian"],
        profile,
        AUTOSCALING,
        SLO,
        WARMUP_S,
        show_progress=True,
    )
    fleet_results = meridian_fleet + peers_fleet
    fleet_best = lineup.best_settings(fleet_results, SLO_GOAL)

    lines = [
        "# Autoscaling: Meridian vs Ray Serve, SkyServe, Knative KPA, static",
        "",
        f"    {command}",
        "    # the same table: .venv/bin/meridian simulate autoscale --trace "
        f"{shlex.quote(_repo_relative(str(args.trace)))} --format azure --plot benchmarks/results/autoscale.png",
        "",
        f"Run {run_at:%Y-%m-%d %H:%M} UTC on {platform.node() or 'this machine'}: {machine}.",
        "",
        f"Trace: {args.trace.name}, {len(trace)} requests over {trace.duration_s / 60:.1f} min, "
        f"mean prompt {trace.prompt_tokens.mean():.0f} / output {trace.output_tokens.mean():.1f} tokens. "
        f"Replica: {profile.name} ({profile.accelerator}, prefill {profile.prefill_tokens_per_s:,.0f} tok/s, "
        f"step {profile.decode_base_s * 1000:g} ms + {profile.decode_per_seq_s * 1000:g} ms/seq, "
        f"KV {profile.kv_capacity_tokens:,} tokens, cold start {profile.cold_start_s:g} s, "
        f"${profile.usd_per_gpu_hour}/GPU-h; sources in meridian_core/replica_model.py). "
        f"SLO: TTFT ≤ {slo_ttft_s:g} s and mean ITL ≤ {SLO.itl_p95_ms:g} ms per request. "
        f"Every autoscaler starts from the same ready replicas, the trace's first-minute prefill work "
        f"(`lineup.opening_replicas`; static: its count); requests arriving "
        f"in the first {WARMUP_S:g} s and replica time in them are not counted. "
        f"Replicas bounded to [{AUTOSCALING.min_replicas}, {AUTOSCALING.max_replicas}].",
        "",
        "## Goal",
        "",
        *goal_verdict(best),
        autoscaler_verdict(best),
        "",
        "## The trace's bursts",
        "",
        *burst_lines(trace, profile, slo_ttft_s),
        "",
        "## Every policy and setting",
        "",
        f"★ = the cheapest setting of that policy reaching {SLO_GOAL:.0%} (else its highest attainment).",
        "",
        "| policy | setting | SLO attainment | GPU-hours | cost $ | max replicas | TTFT p95 s | ITL p95 ms |",
        "|---|---|---|---|---|---|---|---|",
        *[_row(r, best) for r in results],
        "",
        f"All {len(results)} runs took {sweep_s:.1f} s.",
        "",
        "![demand and replicas over time](autoscale.png)",
        "",
        "## Fleet scale",
        "",
        f"`--scale {args.fleet_scale}` ({args.fleet_scale} copies of the trace, copy k shifted by k/K of its "
        f"duration and wrapped, `traces.superpose`): {len(fleet):,} requests. A Meridian run took "
        f"{per_run_s:.1f} s on this machine (target: under 60 s). The same line-up on it:",
        "",
        *goal_verdict(fleet_best),
        autoscaler_verdict(fleet_best),
        "",
        "| policy | setting | SLO attainment | GPU-hours | cost $ | max replicas | TTFT p95 s | ITL p95 ms |",
        "|---|---|---|---|---|---|---|---|",
        *[_row(r, fleet_best) for r in fleet_results],
        "",
    ]
    (RESULTS / "autoscale.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
