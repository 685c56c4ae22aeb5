"""Check the autoscaling simulator against the live local stack on a short trace.

One run, one machine:

1. bring up `configs/bench.yaml` (one region, one vLLM CPU replica of SmolLM2, the
   router in front);
2. calibrate the CPU replica profile on that replica (benchmarks/calibrate_cpu.py);
3. replay the first `--requests` requests of the Azure code trace through the router,
   each at its arrival time, prompts and outputs clipped to what SmolLM2 serves here
   and arrivals stretched so the offered prompt load is `--load` of the calibrated
   prefill speed; record every request's TTFT and mean inter-token gap;
4. simulate the same requests (the prompt and output token counts the server
   reported) with one static replica of the calibrated profile;
5. report p50/p95 TTFT and ITL and SLO attainment, live and simulated, and their ratio,
   in `benchmarks/results/autoscale_live_vs_sim.md`.

    .venv/bin/python benchmarks/autoscale_live_vs_sim.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoscaler import perf, simulation, traces  # noqa: E402
from autoscaler.baselines import StaticConfig, StaticPeak  # noqa: E402
from benchmarks.calibrate_cpu import calibrate, prompt_of, stream  # noqa: E402
from benchmarks.e2e_vs_vllm import meridian  # noqa: E402
from meridian.spec import load_spec  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "configs" / "bench.yaml"
TRACE = REPO.parent / "shared" / "data" / "traces" / "azure_llm_2023_code.csv"
RESULTS = REPO / "benchmarks" / "results"


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
    chunks, usage = await stream(session, url, model, prompt_of(prompt_words, seed), output)
    itl = (chunks[-1] - chunks[0]) / (len(chunks) - 1) if len(chunks) > 1 else 0.0
    return {
        "arrival_s": delay_s,
        "ttft_s": chunks[0] - sent,
        "itl_s": itl,
        "prompt_tokens": usage.get("prompt_tokens", prompt_words),
        "output_tokens": usage.get("completion_tokens", output),
    }


async def replay(url: str, model: str, trace: traces.Trace) -> list[dict]:
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await asyncio.gather(
            *(
                one_request(session, url, model, float(t), int(p), int(o), seed=i)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--max-prompt", type=int, default=512, help="prompt tokens are clipped to this")
    parser.add_argument("--max-output", type=int, default=32, help="output tokens are clipped to this")
    parser.add_argument("--load", type=float, default=0.5, help="offered prompt tokens/s as a share of prefill speed")
    args = parser.parse_args()
    if not args.trace.is_file():
        print(f"no trace at {args.trace}; pass --trace", file=sys.stderr)
        return 2
    spec = load_spec(SPEC)
    model = spec.models[0].id
    slo_ttft_s, slo_itl_s = spec.slo.ttft_p95_ms / 1000, spec.slo.itl_p95_ms / 1000
    requests = window(traces.load_azure(args.trace), args.requests, args.max_prompt, args.max_output)

    with meridian(SPEC) as (router_url, region_url):
        calibration_args = argparse.Namespace(
            url=region_url, model=model, prompt_tokens=args.max_prompt, repeats=3, batches=[1, 2, 4, 8, 16],
            decode_tokens=32, timeout_s=600.0,
        )  # fmt: skip
        calibration = asyncio.run(calibrate(calibration_args))
        profile = perf.CPU_SMOLLM2_135M.model_copy(update=calibration["profile_fields"])
        offered = stretched(requests, profile.prefill_tokens_per_s, args.load)
        print(f"replaying {len(offered)} requests over {offered.duration_s:.0f} s through {router_url}", flush=True)
        live = asyncio.run(replay(router_url, model, offered))

    served = traces.from_arrays(
        np.array([r["arrival_s"] for r in live]),
        np.array([r["prompt_tokens"] for r in live]),
        np.array([r["output_tokens"] for r in live]),
    )
    config = simulation.SimConfig(
        profile=profile, slo_ttft_s=slo_ttft_s, slo_itl_s=slo_itl_s, initial_replicas=1, tick_s=0.1, warmup_s=0.0
    )
    simulated = simulation.simulate(served, StaticPeak(StaticConfig(replicas=1)), config, setting="1 replica")
    live_stats = stats(
        np.array([r["ttft_s"] for r in live]), np.array([r["itl_s"] for r in live]), slo_ttft_s, slo_itl_s
    )
    # The simulator keeps per-request latencies in its region; its summary gives p95 and attainment.
    sim_stats = {
        "ttft_p95_s": simulated.ttft_p95_s,
        "itl_p95_s": simulated.itl_p95_s,
        "slo_attainment": simulated.slo_attainment,
    }
    command = "python benchmarks/autoscale_live_vs_sim.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = {"calibration": calibration, "profile": profile.model_dump(), "live": live_stats, "simulated": sim_stats}
    (RESULTS / "raw" / "autoscale_live_vs_sim.json").write_text(json.dumps(raw, indent=2))
    lines = [
        "# Autoscaling simulator vs the live local stack",
        "",
        f"Command: `{command.strip()}` (one run; {time.strftime('%Y-%m-%d')}).",
        "",
        f"{len(live)} requests of the Azure code trace, prompts clipped to {args.max_prompt} and outputs to",
        f"{args.max_output} tokens, arrivals stretched to {args.load:.0%} of the calibrated prefill speed",
        f"({offered.duration_s:.0f} s), through the router to one vLLM CPU replica of SmolLM2; the simulator",
        "replays the same requests (the server's token counts) on one static replica of the profile",
        "calibrated on that replica in the same run. SLO: TTFT "
        f"{slo_ttft_s * 1000:.0f} ms, ITL {slo_itl_s * 1000:.0f} ms.",
        "",
        "Calibrated profile: prefill {prefill_tokens_per_s} tok/s, decode step {decode_base_s} s + "
        "{decode_per_seq_s} s × batch.".format(**calibration["profile_fields"]),
        "",
        "| metric | live | simulated | simulated / live |",
        "|---|---|---|---|",
    ]
    for key in ("ttft_p95_s", "itl_p95_s", "slo_attainment"):
        ratio = sim_stats[key] / live_stats[key] if live_stats[key] else float("nan")
        lines.append(f"| {key} | {live_stats[key]:.4f} | {sim_stats[key]:.4f} | {ratio:.2f} |")
    lines += ["", f"Live p50: TTFT {live_stats['ttft_p50_s']:.3f} s, ITL {live_stats['itl_p50_s']:.4f} s.", ""]
    (RESULTS / "autoscale_live_vs_sim.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
