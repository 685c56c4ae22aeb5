"""Meridian's autoscaler against Ray Serve, SkyServe, Knative KPA and static provisioning
(each peer over a sweep of its main knob, static chosen in hindsight) on every workload of
the evaluation suite (`autoscaler/sim/workloads.py`), with one policy configuration.

    nice -n 19 .venv/bin/python benchmarks/autoscale_sim.py

Writes benchmarks/results/autoscale.md and one PNG per workload,
benchmarks/results/autoscale_<workload>.png. Every number in the report comes from this
run, the machine's description included. `--workloads a,b` runs a subset (the report
then holds only those); `--quick` leaves out the 100× workloads.
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

from pydantic import BaseModel, ConfigDict  # noqa: E402

from autoscaler.sim import lineup, traces, workloads  # noqa: E402
from autoscaler.sim.cli import SLO_GOAL, run  # noqa: E402
from autoscaler.sim.demand_replay import DemandReplayConfig, DemandReplayResult, simulate  # noqa: E402
from autoscaler.sim.peer_autoscalers import StaticConfig, StaticPeak  # noqa: E402
from autoscaler.sim.plot import plot_results  # noqa: E402
from meridian_core import replica_model  # noqa: E402
from meridian_core.shared_data import AZURE_CODE_TRACE, MOONCAKE_TRACE  # noqa: E402
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


def record_windows(trace: traces.Trace, profile: replica_model.ReplicaProfile, bin_s: float) -> tuple[float, float]:
    """Counted windows busier than every window before them since the trace began (the
    warm-up included): the share of the counted requests arriving in them, and the most
    such a window needs as a multiple of the busiest one before it. A policy that sizes
    for what it has seen holds too few replicas for them."""
    window = (trace.arrival_s // bin_s).astype(np.int64)
    load = np.bincount(window, weights=trace.prompt_tokens) / bin_s / profile.prefill_tokens_per_s
    busiest_before = np.concatenate(([0.0], np.maximum.accumulate(load)[:-1]))
    counted = np.arange(len(load)) * bin_s >= WARMUP_S
    record = counted & (load > busiest_before) & (busiest_before > 0)
    counted_requests = trace.arrival_s >= WARMUP_S
    share = float(record[window[counted_requests]].mean()) if counted_requests.any() else 0.0
    jump = float((load[record] / busiest_before[record]).max()) if record.any() else 1.0
    return share, jump


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
    share, jump = record_windows(trace, profile, bin_s)
    lines.append(
        f"- Windows busier than any before them since the trace began: {share:.1%} of the counted requests; "
        f"the largest needs {jump:.2f}× the busiest window before it."
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


PEERS = ("ray-serve", "skyserve", "knative-kpa")
COST_GOAL = 0.30


class Verdict(BaseModel):
    """One workload's result against the three goals; crosses into the report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workload: str
    meridian_attainment: float
    meridian_gpu_hours: float
    meridian_max_replicas: int
    # The cheapest autoscaling peer setting reaching the goal, if any.
    peer: str | None
    peer_gpu_hours: float | None
    # Static provisioning chosen in hindsight: the cheapest count reaching the goal, if any.
    static: str | None
    static_gpu_hours: float | None
    # The best attainment of a static count cheaper than that one (None: no cheaper count run).
    cheaper_static_attainment: float | None
    # Attainment no policy can beat: requests whose prefill alone, on an idle replica, exceeds the TTFT target.
    attainment_ceiling: float
    # GPU-hours any policy needs at least: the counted prompt and output tokens at the replica's best rates.
    work_bound_gpu_hours: float

    @property
    def slo_met(self) -> bool:
        return self.meridian_attainment >= SLO_GOAL

    @property
    def saving(self) -> float | None:
        if self.peer_gpu_hours is None:
            return None
        return 1.0 - self.meridian_gpu_hours / self.peer_gpu_hours

    @property
    def cost_met(self) -> bool | None:
        saving = self.saving
        return None if saving is None else self.slo_met and saving >= COST_GOAL

    @property
    def static_met(self) -> bool | None:
        if self.static_gpu_hours is None:
            return None
        return self.slo_met and self.meridian_gpu_hours <= self.static_gpu_hours


def attainment_ceiling(trace: traces.Trace, profile: replica_model.ReplicaProfile) -> float:
    """Share of the counted requests whose prefill alone, on an idle replica, is within the TTFT target."""
    prompts = trace.prompt_tokens[trace.arrival_s >= min(WARMUP_S, trace.duration_s)]
    if not len(prompts):
        return 1.0
    unique = np.unique(prompts)
    feasible = np.array([profile.prefill_s(float(p), 1.0) <= SLO.ttft_p95_ms / 1000.0 for p in unique])
    return float(np.isin(prompts, unique[feasible]).mean())


def verdict(
    name: str, trace: traces.Trace, results: list[DemandReplayResult], profile: replica_model.ReplicaProfile
) -> Verdict:
    meridian = next(r for r in results if r.policy == "meridian")
    reaching = [r for r in results if r.slo_attainment >= SLO_GOAL]
    peers = [r for r in reaching if r.policy in PEERS]
    statics = [r for r in reaching if r.policy == "static"]
    peer = min(peers, key=lambda r: r.gpu_hours) if peers else None
    static = min(statics, key=lambda r: r.gpu_hours) if statics else None
    cheaper = [r.slo_attainment for r in results if r.policy == "static" and static and r.gpu_hours < static.gpu_hours]
    counted = trace.arrival_s >= min(WARMUP_S, trace.duration_s)
    prompts = trace.prompt_tokens[counted]
    # Prefill at its full rate, every decode step at the largest batch (its best tokens per second).
    decode_tokens_per_s = profile.max_num_seqs / profile.decode_step_s(profile.max_num_seqs)
    busy_s = prompts.sum() / profile.prefill_tokens_per_s + trace.output_tokens[counted].sum() / decode_tokens_per_s
    return Verdict(
        workload=name,
        meridian_attainment=meridian.slo_attainment,
        meridian_gpu_hours=meridian.gpu_hours,
        meridian_max_replicas=meridian.max_replicas,
        peer=f"{peer.policy} {peer.setting}" if peer else None,
        peer_gpu_hours=peer.gpu_hours if peer else None,
        static=static.setting if static else None,
        static_gpu_hours=static.gpu_hours if static else None,
        cheaper_static_attainment=max(cheaper) if cheaper else None,
        attainment_ceiling=attainment_ceiling(trace, profile),
        work_bound_gpu_hours=float(busy_s) / 3600.0 * profile.gpus_per_replica,
    )


def _mark(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "**NOT met**")


def verdict_lines(v: Verdict) -> list[str]:
    lines = [
        f"- Attainment ≥ {SLO_GOAL:.0%}: Meridian {v.meridian_attainment:.2%} with {v.meridian_gpu_hours:.2f} "
        f"GPU-hours (peak {v.meridian_max_replicas} replicas) — {_mark(v.slo_met)}."
        + (
            f" No policy can exceed {v.attainment_ceiling:.2%} here: the other requests' prefill alone, on an "
            "idle replica, takes longer than the TTFT target."
            if v.attainment_ceiling < 1.0
            else ""
        )
    ]
    if v.peer is None:
        lines.append(
            f"- ≥ {COST_GOAL:.0%} fewer GPU-hours than the cheapest peer at {SLO_GOAL:.0%}: no peer setting "
            f"reached {SLO_GOAL:.0%} — n/a."
        )
    else:
        saving = v.saving or 0.0
        lines.append(
            f"- ≥ {COST_GOAL:.0%} fewer GPU-hours than the cheapest peer at {SLO_GOAL:.0%} ({v.peer}, "
            f"{v.peer_gpu_hours:.2f}): Meridian uses {abs(saving):.1%} {'fewer' if saving >= 0 else 'more'} — "
            f"{_mark(v.cost_met)}."
        )
        cost_target = (1.0 - COST_GOAL) * v.peer_gpu_hours
        if v.static_gpu_hours is not None and cost_target < v.static_gpu_hours and v.cost_met is False:
            cheaper = (
                f"; every cheaper static count swept reaches at most {v.cheaper_static_attainment:.2%}"
                if v.cheaper_static_attainment is not None
                else ""
            )
            lines.append(
                f"  - {COST_GOAL:.0%} below that peer is {cost_target:.2f} GPU-hours, less than the cheapest static "
                f"count reaching {SLO_GOAL:.0%} ({v.static}, {v.static_gpu_hours:.2f}){cheaper}."
            )
    if v.static is None:
        lines.append(f"- ≤ static in hindsight: no static count reached {SLO_GOAL:.0%} — n/a.")
    else:
        lines.append(
            f"- ≤ static in hindsight ({v.static}, {v.static_gpu_hours:.2f} GPU-hours): {_mark(v.static_met)}."
        )
    lines.append(
        f"- Lower bound on GPU-hours for any policy (counted prompt tokens at the full prefill rate plus output "
        f"tokens at the full batch's decode rate, no idle time): {v.work_bound_gpu_hours:.2f}."
    )
    return lines


def summary_row(v: Verdict) -> str:
    peer = f"{v.peer_gpu_hours:.2f} ({v.peer})" if v.peer is not None else "none reaches 99%"
    static = f"{v.static_gpu_hours:.2f} ({v.static})" if v.static is not None else "none reaches 99%"
    return (
        f"| {v.workload} | {v.meridian_attainment:.2%} | {v.meridian_gpu_hours:.2f} | {peer} | {static} | "
        f"{v.attainment_ceiling:.2%} | {v.work_bound_gpu_hours:.2f} | {_mark(v.slo_met)} | {_mark(v.cost_met)} | "
        f"{_mark(v.static_met)} |"
    )


TABLE_HEAD = [
    "| policy | setting | SLO attainment | GPU-hours | cost $ | max replicas | TTFT p95 s | ITL p95 ms |",
    "|---|---|---|---|---|---|---|---|",
]


def workload_section(
    name: str,
    trace: traces.Trace,
    results: list[DemandReplayResult],
    v: Verdict,
    profile: replica_model.ReplicaProfile,
    elapsed_s: float,
    png: Path,
) -> list[str]:
    best = lineup.best_settings(results, SLO_GOAL)
    about = workloads.info(name, trace)
    return [
        f"## {name}",
        "",
        f"{workloads.spec(name).how}. {about.requests:,} requests over {about.duration_min:.1f} min "
        f"({about.mean_rps:.1f} req/s), mean prompt {about.mean_prompt:.0f} / output {about.mean_output:.1f} tokens.",
        "",
        *verdict_lines(v),
        "",
        *burst_lines(trace, profile, SLO.ttft_p95_ms / 1000.0),
        "",
        f"★ = the cheapest setting of that policy reaching {SLO_GOAL:.0%} (else its highest attainment).",
        "",
        *TABLE_HEAD,
        *[_row(r, best) for r in results],
        "",
        f"All {len(results)} runs took {elapsed_s:.1f} s.",
        "",
        f"![{name}: demand, replicas and attainment over time]({png.name})",
        "",
    ]


def _static(trace: traces.Trace, replicas: int, profile: replica_model.ReplicaProfile) -> DemandReplayResult:
    """Static provisioning at `replicas`, run exactly as `autoscaler.sim.cli.run` runs it."""
    config = DemandReplayConfig(
        profile=profile,
        slo_ttft_s=SLO.ttft_p95_ms / 1000.0,
        slo_itl_s=SLO.itl_p95_ms / 1000.0,
        min_replicas=AUTOSCALING.min_replicas,
        max_replicas=AUTOSCALING.max_replicas,
        initial_replicas=replicas,
        warmup_s=WARMUP_S,
    )
    policy = StaticPeak(StaticConfig(replicas=replicas, min_replicas=0, max_replicas=max(replicas, 1)))
    return simulate(trace, policy, config, f"replicas={replicas}")


def static_in_hindsight(
    trace: traces.Trace, results: list[DemandReplayResult], profile: replica_model.ReplicaProfile, ceiling: float
) -> list[DemandReplayResult]:
    """Extra static runs that find the fewest replicas reaching the goal: the sweep's grid is
    coarse at scale and sized on prefill alone, so double past it while none reaches the goal
    (unless the ceiling rules it out), then bisect between the last miss and the first hit."""
    tried = {int(r.setting.split("=")[1]): r for r in results if r.policy == "static"}
    extra: list[DemandReplayResult] = []

    def attempt(n: int) -> bool:
        if n not in tried:
            tried[n] = _static(trace, n, profile)
            extra.append(tried[n])
        return tried[n].slo_attainment >= SLO_GOAL

    if ceiling < SLO_GOAL or not tried:
        return extra
    n = max(tried)
    while not any(r.slo_attainment >= SLO_GOAL for r in tried.values()) and n < AUTOSCALING.max_replicas:
        n = min(2 * n, AUTOSCALING.max_replicas)
        attempt(n)
    hits = [k for k, r in tried.items() if r.slo_attainment >= SLO_GOAL]
    if not hits:
        return extra
    hi = min(hits)
    lo = max((k for k in tried if k < hi), default=0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    return extra


def _order(result: DemandReplayResult) -> tuple[int, float]:
    """Line-up order, static counts ascending."""
    count = float(result.setting.split("=")[1]) if result.policy == "static" else 0.0
    return lineup.POLICIES.index(result.policy), count


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in workloads.NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown workload {', '.join(unknown)}; choose from {', '.join(workloads.NAMES)}"
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--azure-trace", type=Path, default=AZURE_CODE_TRACE)
    parser.add_argument("--mooncake-trace", type=Path, default=MOONCAKE_TRACE)
    parser.add_argument(
        "--workloads",
        type=_names,
        default=list(workloads.NAMES),
        help=f"comma-separated subset of: {', '.join(workloads.NAMES)}",
    )
    parser.add_argument("--quick", action="store_true", help="leave out the 100× workloads")
    args = parser.parse_args()
    paths = {"azure": args.azure_trace, "mooncake": args.mooncake_trace}
    names = [n for n in args.workloads if not (args.quick and n.endswith("-100x"))]
    missing = sorted({need for n in names for need in workloads.spec(n).needs if not paths[need].is_file()})
    if missing:
        sys.exit(f"no trace at {', '.join(str(paths[m]) for m in missing)}")
    command = shlex.join([_repo_relative(sys.executable), _repo_relative(sys.argv[0]), *sys.argv[1:]])
    run_at, machine = datetime.now(UTC), machine_line()
    profile = replica_model.H100_LLAMA31_8B
    slo_ttft_s = SLO.ttft_p95_ms / 1000.0
    RESULTS.mkdir(parents=True, exist_ok=True)

    began_all = time.perf_counter()
    verdicts: list[Verdict] = []
    sections: list[str] = []
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        trace = workloads.build(name, args.azure_trace, args.mooncake_trace)
        began = time.perf_counter()
        results = run(trace, list(lineup.POLICIES), profile, AUTOSCALING, SLO, WARMUP_S, show_progress=True)
        results += static_in_hindsight(trace, results, profile, attainment_ceiling(trace, profile))
        results.sort(key=_order)
        elapsed = time.perf_counter() - began
        best = lineup.best_settings(results, SLO_GOAL)
        png = RESULTS / f"autoscale_{name}.png"
        plot_results(
            [best[n] for n in lineup.POLICIES if n in best],
            png,
            f"{name}, {profile.name}, SLO TTFT {slo_ttft_s:g} s / ITL {SLO.itl_p95_ms:g} ms; best settings",
        )
        v = verdict(name, trace, results, profile)
        verdicts.append(v)
        sections += workload_section(name, trace, results, v, profile, elapsed, png)
        print("\n".join(verdict_lines(v)), file=sys.stderr, flush=True)
    total_s = time.perf_counter() - began_all

    lines = [
        "# Autoscaling: Meridian vs Ray Serve, SkyServe, Knative KPA, static — the evaluation suite",
        "",
        f"    {command}",
        "",
        f"Run {run_at:%Y-%m-%d %H:%M} UTC on {platform.node() or 'this machine'}: {machine}. "
        f"The whole run took {total_s / 60:.1f} min.",
        "",
        f"Replica: {profile.name} ({profile.accelerator}, prefill {profile.prefill_tokens_per_s:,.0f} tok/s, "
        f"step {profile.decode_base_s * 1000:g} ms + {profile.decode_per_seq_s * 1000:g} ms/seq, "
        f"KV {profile.kv_capacity_tokens:,} tokens, cold start {profile.cold_start_s:g} s, "
        f"${profile.usd_per_gpu_hour}/GPU-h; sources in meridian_core/replica_model.py). "
        f"SLO: TTFT ≤ {slo_ttft_s:g} s and mean ITL ≤ {SLO.itl_p95_ms:g} ms per request. "
        f"One Meridian configuration on every workload (`SloPolicyConfig` defaults, attainment "
        f"{', '.join(f'{a:g}' for a in lineup.MERIDIAN_ATTAINMENT)}); every peer over its whole sweep "
        f"(`autoscaler/sim/lineup.py`), static over counts up to {lineup.STATIC_PEAK_MULTIPLE:g}× the "
        f"busiest 10 s of prefill work. Every autoscaler starts from the same ready replicas, the trace's "
        f"first-minute prefill work (`lineup.opening_replicas`; static: its count); requests arriving "
        f"in the first {WARMUP_S:g} s and replica time in them are not counted. "
        f"Replicas bounded to [{AUTOSCALING.min_replicas}, {AUTOSCALING.max_replicas}]. "
        f"Workloads: `autoscaler/sim/workloads.py` (the Azure 2023 code and Mooncake conversation traces from "
        f"`../shared/data`, and seeded synthetic families).",
        "",
        "## Summary",
        "",
        f"Goals: attainment ≥ {SLO_GOAL:.0%}; ≥ {COST_GOAL:.0%} fewer GPU-hours than the cheapest autoscaling "
        f"peer setting (Ray Serve, SkyServe, Knative KPA) reaching {SLO_GOAL:.0%}; no more GPU-hours than the "
        f"cheapest static count reaching {SLO_GOAL:.0%}. n/a: no such setting. Ceiling: the attainment no policy "
        "can beat; bound: the GPU-hours of the work alone.",
        "",
        "| workload | Meridian attainment | Meridian GPU-h | cheapest peer at 99%, GPU-h | static in hindsight, GPU-h "
        "| ceiling | bound GPU-h | ≥ 99% | ≥ 30% below peer | ≤ static |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[summary_row(v) for v in verdicts],
        "",
        *sections,
    ]
    (RESULTS / "autoscale.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
