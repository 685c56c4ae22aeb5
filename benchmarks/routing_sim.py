"""Replay the Mooncake conversation trace under every routing policy at several cache
sizes; write benchmarks/results/routing_simulation.md from that one run.

    .venv/bin/python benchmarks/routing_sim.py [--trace PATH] [--regions SPEC] [--profile NAME]
        [--cache-blocks 500 2000 8000]

Each cache size is what `meridian simulate routing --profile NAME --cache-blocks N --json`
prints; every figure in the report is computed here from those results. The replicas serve
by the profile named explicitly (the simulator's truth, which Meridian's policy also
estimates with): by default `llama-3.1-8b-h100`, since the Mooncake trace was served on GPUs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

from meridian_core.replica_model import H100_LLAMA31_8B, PROFILES  # noqa: E402
from meridian_core.shared_data import MOONCAKE_TRACE  # noqa: E402


def simulate(trace: Path, regions: Path, profile: str, cache_blocks: int) -> list[dict]:
    command = [
        str(BIN / "meridian"), "simulate", "routing", "--trace", str(trace), "--regions", str(regions),
        "--profile", profile, "--cache-blocks", str(cache_blocks), "--json",
    ]  # fmt: skip
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout)


def best(rows: list[dict], key: str) -> str:
    return min(rows, key=lambda row: row[key])["policy"]


def render(command: str, trace: Path, regions: Path, profile: str, runs: dict[int, list[dict]], seconds: float) -> str:
    replica = PROFILES[profile]
    lines = [
        "# Routing policies on a request trace (simulated)",
        "",
        f"    {command}",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {seconds:.0f} s. Trace `{trace.name}`, regions and "
        f"`router.scoring` from `{regions.relative_to(REPO) if regions.is_relative_to(REPO) else regions}`. "
        f"Every replica serves by the `{profile}` profile (`meridian_core/replica_model.py`: "
        f"{replica.accelerator}, prefill {replica.prefill_tokens_per_s:,.0f} tok/s first come first served, decode "
        f"step {replica.decode_base_s * 1000:g} ms + {replica.decode_per_seq_s * 1000:g} ms/seq, "
        f"{replica.max_num_seqs} sequences, KV {replica.kv_capacity_tokens:,} tokens): the simulator's truth, and "
        "what Meridian's policy estimates with. "
        "The simulator is deterministic; its model is described in `geo_router/sim/routing_replay.py`. The Meridian "
        "policy is the live router's scorer (`geo_router/policy/scoring.py`).",
        "",
        "| cache blocks / replica | policy | TTFT mean ms | TTFT p99 ms | cache hit rate | spill rate | mean RTT ms |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for blocks, rows in runs.items():
        lowest = {key: best(rows, key) for key in ("ttft_mean_ms", "ttft_p99_ms")}
        for row in rows:
            mean = f"{row['ttft_mean_ms']:.0f}"
            p99 = f"{row['ttft_p99_ms']:.0f}"
            mean = f"**{mean}**" if lowest["ttft_mean_ms"] == row["policy"] else mean
            p99 = f"**{p99}**" if lowest["ttft_p99_ms"] == row["policy"] else p99
            lines.append(
                f"| {blocks} | {row['policy']} | {mean} | {p99} | {row['cache_hit_rate']:.1%} "
                f"| {row['spill_rate']:.1%} | {row['mean_rtt_ms']:.1f} |"
            )
        by_policy = {row["policy"]: row for row in rows}
        meridian, nearest = by_policy["meridian"], by_policy["nearest"]
        rtt_over = meridian["mean_rtt_ms"] / nearest["mean_rtt_ms"] - 1
        verdicts.append(
            f"- {blocks} blocks: lowest mean TTFT {lowest['ttft_mean_ms']}, lowest p99 {lowest['ttft_p99_ms']}; "
            f"Meridian's mean RTT {rtt_over:+.1%} over nearest-only."
        )
    lines += ["", "Bold: the lowest of each column at that cache size.", "", *verdicts]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", type=Path, default=MOONCAKE_TRACE)
    parser.add_argument("--regions", type=Path, default=REPO / "configs" / "sim-global.yaml")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=H100_LLAMA31_8B.name)
    parser.add_argument("--cache-blocks", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--out", type=Path, default=RESULTS / "routing_simulation.md")
    args = parser.parse_args()
    if not args.trace.is_file():
        raise SystemExit(f"no trace at {args.trace} (pass --trace PATH)")
    began = time.monotonic()
    runs = {}
    for blocks in args.cache_blocks:
        print(f"cache {blocks} blocks ...", flush=True)
        runs[blocks] = simulate(args.trace, args.regions.resolve(), args.profile, blocks)
    command = shlex.join(["python", "benchmarks/routing_sim.py", *sys.argv[1:]])
    report = render(command, args.trace, args.regions.resolve(), args.profile, runs, time.monotonic() - began)
    args.out.write_text(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
