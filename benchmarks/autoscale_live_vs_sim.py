"""Check the autoscaling simulator against the live local stack on a short trace.

One command, one platform, every load it reports:

1. bring up `configs/bench.yaml` (one region, one vLLM CPU replica of SmolLM2, the
   router in front);
2. calibrate the CPU replica profile on that replica once (benchmarks/calibrate_cpu.py);
   every load below is simulated with that one profile;
3. for each of `--loads`, in order: replay the first `--requests` requests of the Azure
   code trace through the router, each at its arrival time, prompts and outputs clipped
   to what SmolLM2 serves here and arrivals stretched so the offered prompt load is that
   share of the calibrated prefill speed; record every request's TTFT and mean
   inter-token gap (the same coalescing-proof count as the calibration's);
4. simulate the same requests (the prompt and output token counts the server reported)
   with one static replica of the calibrated profile;
5. write `benchmarks/results/autoscale_live_vs_sim.md` (the command, date, machine, the
   calibration, a table per load: p95 TTFT and ITL and SLO attainment, live and
   simulated, and their ratio) and `benchmarks/results/raw/autoscale_live_vs_sim.json`
   (all of it, with every live request, for every load).

    .venv/bin/python benchmarks/autoscale_live_vs_sim.py                 # --loads 0.5 0.15, 150 requests each
    .venv/bin/python benchmarks/autoscale_live_vs_sim.py --requests 20                # a smoke run, ~5 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoscaler.sim import demand_replay, traces  # noqa: E402
from autoscaler.sim.peer_autoscalers import StaticConfig, StaticPeak  # noqa: E402
from benchmarks.calibrate_cpu import calibrate, decode_step_s, prompt_of, stream  # noqa: E402
from benchmarks.e2e_vs_vllm import meridian  # noqa: E402
from meridian_core import replica_model  # noqa: E402
from meridian_core.shared_data import AZURE_CODE_TRACE  # noqa: E402
from meridian_core.spec import load_spec  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "configs" / "bench.yaml"
RESULTS = REPO / "benchmarks" / "results"
SEED_STRIDE = 100_000  # prompt seeds a replay may use; more than any --requests


def window(trace: traces.Trace, requests: int, max_prompt: int, max_output: int) -> traces.Trace:
    n = min(requests, len(trace))
    return traces.from_arrays(
        trace.arrival_s[:n],
        np.minimum(trace.prompt_tokens[:n], max_prompt),
        np.minimum(trace.output_tokens[:n], max_output),
    )


def stretched(trace: traces.Trace, prefill_tokens_per_s: float, load: float) -> traces.Trace:
    """The same requests with arrivals scaled so prompt tokens arrive at `load` × prefill speed."""
    offered = float(trace.prompt_tokens.sum()) / max(trace.duration_s, 1e-9)
    factor = offered / (load * prefill_tokens_per_s)
    return traces.from_arrays(trace.arrival_s * factor, trace.prompt_tokens, trace.output_tokens)


async def one_request(
    session: aiohttp.ClientSession, url: str, model: str, delay_s: float, prompt_words: int, output: int, seed: int
) -> dict:
    await asyncio.sleep(delay_s)
    sent = time.perf_counter()
    reads, usage = await stream(session, url, model, prompt_of(prompt_words, seed), output)
    itl = decode_step_s(reads)
    return {
        "arrival_s": delay_s,
        "ttft_s": reads[0][0] - sent,
        "itl_s": itl if itl is not None else 0.0,
        "reads": len(reads),
        "prompt_tokens": usage.get("prompt_tokens", prompt_words),
        "output_tokens": usage.get("completion_tokens", output),
    }


def prompt_seed_base(load_number: int) -> int:
    """First prompt seed of the `load_number`-th replay (0-based). The replays share one engine,
    whose prefix cache would serve a prompt seen before (prompt_of's words for a seed are one
    sequence, so the same seed at another length shares its prefix): each replay draws its
    own seeds, above the calibration's (prefill from 0, decode from 1000)."""
    return SEED_STRIDE * (load_number + 1)


async def replay(url: str, model: str, trace: traces.Trace, seed_base: int) -> list[dict]:
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await asyncio.gather(
            *(
                one_request(session, url, model, float(t), int(p), int(o), seed=seed_base + i)
                for i, (t, p, o) in enumerate(
                    zip(trace.arrival_s, trace.prompt_tokens, trace.output_tokens, strict=True)
                )
            )
        )


def stats(ttft: np.ndarray, itl: np.ndarray, slo_ttft_s: float, slo_itl_s: float) -> dict:
    return {
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p95_s": float(np.percentile(ttft, 95)),
        "itl_p50_s": float(np.percentile(itl, 50)),
        "itl_p95_s": float(np.percentile(itl, 95)),
        "slo_attainment": float(((ttft <= slo_ttft_s) & (itl <= slo_itl_s)).mean()),
    }


def machine() -> dict:
    """What this machine is and how busy it was, read now."""
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    ) if Path("/proc/cpuinfo").is_file() else (platform.processor() or "unknown")  # fmt: skip
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def simulate_load(
    live: list[dict], profile: replica_model.ReplicaProfile, slo_ttft_s: float, slo_itl_s: float
) -> dict[str, float]:
    """The simulator's p95s and attainment on the requests the live run served."""
    served = traces.from_arrays(
        np.array([r["arrival_s"] for r in live]),
        np.array([r["prompt_tokens"] for r in live]),
        np.array([r["output_tokens"] for r in live]),
    )
    config = demand_replay.DemandReplayConfig(
        profile=profile, slo_ttft_s=slo_ttft_s, slo_itl_s=slo_itl_s, initial_replicas=1, tick_s=0.1, warmup_s=0.0
    )
    simulated = demand_replay.simulate(served, StaticPeak(StaticConfig(replicas=1)), config, setting="1 replica")
    # The simulator keeps per-request latencies in its region; its summary gives p95 and attainment.
    return {
        "ttft_p95_s": simulated.ttft_p95_s,
        "itl_p95_s": simulated.itl_p95_s,
        "slo_attainment": simulated.slo_attainment,
    }


def ratio(simulated: float, live: float) -> str:
    return f"{simulated / live:.2f}" if live else "n/a"


def report(raw: dict, args: argparse.Namespace, slo_ttft_s: float, slo_itl_s: float) -> list[str]:
    box, calibration, fields = raw["machine"], raw["calibration"], raw["calibration"]["profile_fields"]
    base, per_seq = fields["decode_base_s"], fields["decode_per_seq_s"]
    lines = [
        "# Autoscaling simulator vs the live local stack",
        "",
        f"    {raw['command']}",
        "",
        f"Run {raw['started']} UTC, {raw['wall_s'] / 60:.1f} min, on {box['host'] or 'this machine'}: "
        f"{box['cpus']} CPUs ({box['cpus_usable']} usable by the run), {box['cpu_model']}, "
        f"{box['memory_gib']:g} GiB memory; 1-minute load average {box['load_avg_1m']:g} at the start, "
        f"{raw['load_avg_1m_at_end']:g} at the end. One platform (`configs/bench.yaml`), one calibration, "
        f"then the loads in the order given. Raw data: `raw/autoscale_live_vs_sim.json`.",
        "",
        f"Each load replays the first {args.requests} requests of the Azure code trace, prompts clipped to "
        f"{args.max_prompt} and outputs to {args.max_output} tokens, arrivals stretched so prompt tokens arrive "
        "at that share of the calibrated prefill speed, through the router to one vLLM CPU replica of "
        "SmolLM2; the simulator replays the same requests (the server's token counts) on one static replica "
        f"of the calibrated profile. SLO: TTFT {slo_ttft_s * 1000:.0f} ms, ITL {slo_itl_s * 1000:.0f} ms. "
        "ITL is a request's mean inter-token gap: (last token read − first read) / tokens after the first read. "
        "Every replay has its own prompts (seeds), none the calibration's, so none is served from another's "
        "prefix cache.",
        "",
        "## Calibration",
        "",
        f"On the region's replica, before the first load: prefill {fields['prefill_tokens_per_s']} tok/s "
        f"(median of {len(calibration['prefill']['samples'])} prompts of {args.max_prompt} words; samples "
        + ", ".join(f"{x:.0f}" for x in calibration["prefill"]["samples"])
        + f"); decode step fitted {base} s + {per_seq} s × batch.",
        "",
        "| batch | measured step ms | fitted ms | tokens / reads a stream |",
        "|---|---|---|---|",
    ]
    for batch, step in calibration["decode_step_s_by_batch"].items():
        seen = calibration["decode_reads_by_batch"][batch]
        lines.append(
            f"| {batch} | {step * 1000:.1f} | {(base + per_seq * int(batch)) * 1000:.1f} | "
            f"{seen['tokens_per_stream']:g} / {seen['reads_per_stream']:g} |"
        )
    for run in raw["loads"]:
        live, sim = run["live"], run["simulated"]
        lines += [
            "",
            f"## Load {run['load']:.0%}",
            "",
            f"{len(run['requests'])} requests over {run['duration_s']:.0f} s of arrivals "
            f"(replay took {run['replay_wall_s']:.0f} s).",
            "",
            "| metric | live | simulated | simulated / live |",
            "|---|---|---|---|",
            *[
                f"| {key} | {live[key]:.4f} | {sim[key]:.4f} | {ratio(sim[key], live[key])} |"
                for key in ("ttft_p95_s", "itl_p95_s", "slo_attainment")
            ],
            "",
            f"Live p50: TTFT {live['ttft_p50_s']:.3f} s, ITL {live['itl_p50_s']:.4f} s.",
        ]
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", type=Path, default=AZURE_CODE_TRACE)
    parser.add_argument("--requests", type=int, default=150, help="requests replayed at each load")
    parser.add_argument("--max-prompt", type=int, default=512, help="prompt tokens are clipped to this")
    parser.add_argument("--max-output", type=int, default=32, help="output tokens are clipped to this")
    parser.add_argument(
        "--loads",
        type=float,
        nargs="+",
        default=[0.5, 0.15],
        help="offered prompt tokens/s as shares of prefill speed, one replay each, in this order",
    )
    args = parser.parse_args()
    if not args.trace.is_file():
        print(f"no trace at {args.trace}; pass --trace", file=sys.stderr)
        return 2
    spec = load_spec(SPEC)
    model = spec.models[0].id
    slo_ttft_s, slo_itl_s = spec.slo.ttft_p95_ms / 1000, spec.slo.itl_p95_ms / 1000
    if args.requests > SEED_STRIDE:
        parser.error(f"--requests is at most {SEED_STRIDE}")
    requests = window(traces.load_azure(args.trace), args.requests, args.max_prompt, args.max_output)
    raw: dict = {
        "command": shlex.join([_repo_relative(sys.executable), _repo_relative(sys.argv[0]), *sys.argv[1:]]),
        "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        "machine": machine(),
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "loads": [],
    }
    began = time.perf_counter()

    with meridian(SPEC) as (router_url, region_url):
        calibration_args = argparse.Namespace(
            url=region_url, model=model, prompt_tokens=args.max_prompt, repeats=3, batches=[1, 2, 4, 8, 16],
            decode_tokens=32, timeout_s=600.0,
        )  # fmt: skip
        calibration = asyncio.run(calibrate(calibration_args))
        profile = replica_model.CPU_SMOLLM2_135M.model_copy(update=calibration["profile_fields"])
        raw["calibration"], raw["profile"] = calibration, profile.model_dump()
        for number, load in enumerate(args.loads):
            offered = stretched(requests, profile.prefill_tokens_per_s, load)
            print(f"load {load:g}: replaying {len(offered)} requests over {offered.duration_s:.0f} s", flush=True)
            replay_began = time.perf_counter()
            live = asyncio.run(replay(router_url, model, offered, prompt_seed_base(number)))
            raw["loads"].append(
                {
                    "load": load,
                    "prompt_seeds_from": prompt_seed_base(number),
                    "duration_s": offered.duration_s,
                    "replay_wall_s": time.perf_counter() - replay_began,
                    "requests": live,
                }
            )

    for run in raw["loads"]:
        live = run["requests"]
        run["live"] = stats(
            np.array([r["ttft_s"] for r in live]), np.array([r["itl_s"] for r in live]), slo_ttft_s, slo_itl_s
        )
        run["simulated"] = simulate_load(live, profile, slo_ttft_s, slo_itl_s)
    raw["wall_s"] = time.perf_counter() - began
    raw["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "autoscale_live_vs_sim.json").write_text(json.dumps(raw, indent=2) + "\n")
    lines = report(raw, args, slo_ttft_s, slo_itl_s)
    (RESULTS / "autoscale_live_vs_sim.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _repo_relative(path: str) -> str:
    """`path` as typed from the repository's root (where the commands are run)."""
    return os.path.relpath(Path(path).absolute(), REPO)


if __name__ == "__main__":
    raise SystemExit(main())
