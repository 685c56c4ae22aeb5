"""What 99% SLO attainment costs an online autoscaler on a workload whose demand steps up.

No policy can add a replica sooner than its cold start. The requests that arrive in the
cold start after a step up are served by the replicas held before it. A policy that
cannot see the step coming must hold those replicas all the time.

For each workload (default: the suite's two with a step up, `step-surge` and `trough`),
this script does two things.

1. It finds the sharpest step up in the trace and derives a bound from it. The step is
   the start of the cold-start-long window with the highest arrival rate relative to the
   five minutes before it. From it the script reports:
   - the share of the counted requests arriving in that window;
   - the most a 99% policy may lose (1% of the counted requests);
   - hence the least share of the window's arrival rate the replicas held before the
     step must carry, as a multiple of the rate before the step.
2. It sweeps a replica floor under Meridian's policy and compares it with static
   provisioning of the same count, in the same simulator and under the same SLO as
   `benchmarks/autoscale_sim.py`. The floors are fractions of the trace's peak prefill
   need.

    nice -n 19 .venv/bin/python benchmarks/autoscale_step_bound.py   # writes benchmarks/results/autoscale_step_bound.md
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autoscaler.sim import lineup, workloads  # noqa: E402
from autoscaler.sim.cli import SLO_GOAL, run  # noqa: E402
from autoscaler.sim.traces import Trace  # noqa: E402
from benchmarks.autoscale_sim import AUTOSCALING, SLO, WARMUP_S, _static, machine_line  # noqa: E402
from benchmarks.servers import command_line, publish  # noqa: E402
from meridian_core import replica_model  # noqa: E402
from meridian_core.shared_data import AZURE_CODE_TRACE, MOONCAKE_TRACE  # noqa: E402
from meridian_core.spec import AutoscalingSpec  # noqa: E402

BEFORE_S = 300.0
FLOOR_FRACTIONS = (0.0, 0.5, 0.7, 0.8, 0.9, 1.0)


def sharpest_step(trace: Trace, window_s: float) -> dict[str, float]:
    """The counted second at which arrivals in the next `window_s`, per second, are the
    highest multiple of those in the `BEFORE_S` before it (one-second grid)."""
    seconds = np.bincount(trace.arrival_s.astype(np.int64))
    cumulative = np.concatenate(([0], np.cumsum(seconds)))
    starts = np.arange(int(max(WARMUP_S, BEFORE_S)), len(seconds) - int(window_s))
    within = cumulative[starts + int(window_s)] - cumulative[starts]
    before = cumulative[starts] - cumulative[starts - int(BEFORE_S)]
    ratio = (within / window_s) / np.maximum(before / BEFORE_S, 1e-9)
    best = int(np.argmax(ratio))
    counted = int((trace.arrival_s >= WARMUP_S).sum())
    budget = (1.0 - SLO_GOAL) * counted
    share = max(0.0, (within[best] - budget) / within[best])
    return {
        "step_at_s": float(starts[best]),
        "counted_requests": counted,
        "requests_in_window": int(within[best]),
        "window_share_of_counted": float(within[best] / counted),
        "rate_before_per_s": float(before[best] / BEFORE_S),
        "rate_in_window_per_s": float(within[best] / window_s),
        "may_lose": float(budget),
        "least_share_of_window_rate": float(share),
        "least_multiple_of_rate_before": float(share * (within[best] / window_s) / max(before[best] / BEFORE_S, 1e-9)),
    }


def floor_sweep(trace: Trace, profile: replica_model.ReplicaProfile) -> list[dict]:
    peak = lineup.peak_replicas(trace, profile)
    floors = sorted({max(1, round(f * peak)) for f in FLOOR_FRACTIONS})
    rows = []
    for floor in floors:
        bounds = AutoscalingSpec(min_replicas=floor, max_replicas=AUTOSCALING.max_replicas)
        (meridian,) = run(trace, ["meridian"], profile, bounds, SLO, WARMUP_S, show_progress=False)
        static = _static(trace, floor, profile)
        rows.append({"floor": floor, "meridian": meridian.as_dict(), "static": static.as_dict()})
    return rows


def render(raw: dict) -> str:
    lines = [
        "# What 99% costs an online autoscaler when demand steps up",
        "",
        "Command:",
        "",
        f"    {raw['command']}",
        "",
        f"- date: {raw['started']}",
        f"- machine: {raw['machine']}",
        f"- profile {raw['profile']}, SLO TTFT {SLO.ttft_p95_ms / 1000:g} s / ITL {SLO.itl_p95_ms:g} ms, "
        f"goal {SLO_GOAL:.0%}; the first {WARMUP_S:.0f} s of each trace are not counted",
        f"- a replica takes {raw['cold_start_s']:.0f} s to start: no policy adds capacity sooner after a step",
        "",
        "The step is the counted second whose next cold start's worth of arrivals is the highest multiple "
        f"of the {BEFORE_S:.0f} s before it. A policy at {SLO_GOAL:.0%} may lose 1% of the counted requests; "
        "the rest of the window's requests must be carried by the replicas it held before the step, so "
        "those replicas must carry at least the share of the window's rate below, all the time the policy "
        "cannot tell a step is coming.",
    ]
    for name, result in raw["workloads"].items():
        step = result["step"]
        lines += [
            "",
            f"## {name}",
            "",
            f"{workloads.spec(name).how}.",
            "",
            "| step at | counted requests | in the cold start after it | share of counted | "
            "rate before → in window | least share of the window's rate held before | "
            "as a multiple of the rate before |",
            "|---|---|---|---|---|---|---|",
            f"| {step['step_at_s'] / 60:.1f} min | {step['counted_requests']:,} | {step['requests_in_window']:,} | "
            f"{step['window_share_of_counted']:.2%} | {step['rate_before_per_s']:.1f} → "
            f"{step['rate_in_window_per_s']:.1f} req/s | {step['least_share_of_window_rate']:.0%} | "
            f"{step['least_multiple_of_rate_before']:.2f}× |",
            "",
            f"Meridian's policy with a replica floor, and static provisioning at that count (peak prefill need "
            f"{result['peak_replicas']:.1f} replicas):",
            "",
            "| floor | Meridian: attainment | Meridian: GPU-hours | static: attainment | static: GPU-hours |",
            "|---|---|---|---|---|",
        ]
        for row in result["sweep"]:
            m, s = row["meridian"], row["static"]
            lines.append(
                f"| {row['floor']} | {m['slo_attainment']:.2%} | {m['gpu_hours']:.2f} | "
                f"{s['slo_attainment']:.2%} | {s['gpu_hours']:.2f} |"
            )
    lines += ["", f"The run took {raw['elapsed_s']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--azure-trace", type=Path, default=AZURE_CODE_TRACE)
    parser.add_argument("--mooncake-trace", type=Path, default=MOONCAKE_TRACE)
    parser.add_argument("--workloads", default="step-surge,trough", help="comma-separated names from the suite")
    args = parser.parse_args()
    profile = replica_model.H100_LLAMA31_8B
    started, clock = datetime.now(UTC), time.monotonic()
    raw: dict = {
        "command": command_line(),
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_line(),
        "profile": profile.name,
        "cold_start_s": profile.cold_start_s,
        "workloads": {},
    }
    for name in args.workloads.split(","):
        trace = workloads.build(name, args.azure_trace, args.mooncake_trace)
        raw["workloads"][name] = {
            "step": sharpest_step(trace, profile.cold_start_s),
            "peak_replicas": lineup.peak_replicas(trace, profile),
            "sweep": floor_sweep(trace, profile),
        }
        print(f"== {name} done", file=sys.stderr, flush=True)
    raw["elapsed_s"] = time.monotonic() - clock
    publish("autoscale_step_bound", raw, render(raw))


if __name__ == "__main__":
    main()
