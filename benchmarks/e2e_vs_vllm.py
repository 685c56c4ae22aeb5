"""Meridian's end-to-end path against bare `vllm serve`, with vLLM's own load generator.

One run, three targets, the same engine settings, the same `vllm bench serve` workload:

1. bare vLLM: `vllm serve` on the converted default model;
2. the Ray Serve region app alone (Serve proxy -> ingress -> LLMServer -> vLLM);
3. Meridian: geo router -> that same region app.

(2) is not asked for, but it splits Meridian's overhead into the router's share and
Ray Serve's share. The report goes to benchmarks/results/e2e_vs_vllm.md, raw JSON
beside it.

    .venv/bin/python benchmarks/e2e_vs_vllm.py            # or: make bench
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.cpu_accounting import cpu_seconds_by_role, snapshot  # noqa: E402
from benchmarks.servers import served  # noqa: E402
from meridian import launcher, models  # noqa: E402
from meridian.spec import load_spec  # noqa: E402

BIN = Path(sys.executable).parent
VLLM = str(BIN / "meridian-vllm")
RESULTS = REPO / "benchmarks" / "results"
BARE_VLLM_PORT = 28123


@contextlib.contextmanager
def bare_vllm(model_path: str, model_id: str, max_model_len: int, kv_cache_gib: int, log: Path) -> Iterator[str]:
    command = [
        VLLM, "serve", model_path, "--served-model-name", model_id, "--host", "127.0.0.1",
        "--port", str(BARE_VLLM_PORT), "--max-model-len", str(max_model_len),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{BARE_VLLM_PORT}"
    with served(command, f"{url}/v1/models", log, env={"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}):
        yield url


@contextlib.contextmanager
def meridian(spec_path: Path) -> Iterator[tuple[str, str]]:
    """Yield (router URL, region app URL) of a one-region platform."""
    spec = load_spec(spec_path)
    launcher.down(spec.name)
    state, _ = launcher.up(spec_path, on_step=lambda message: print(f"  meridian: {message}", flush=True))
    try:
        yield state.router_url, spec.region_endpoint(spec.regions[0])
    finally:
        launcher.down(spec.name)


def run_bench(name: str, seed: int, base_url: str, model_id: str, tokenizer: str, args: argparse.Namespace) -> dict:
    """One `vllm bench serve` run. Each target gets its own seed: the region app and
    Meridian share one engine, and the same prompts twice would hit its prefix cache."""
    result_file = RESULTS / "raw" / f"e2e_vs_vllm-{name}.json"
    result_file.parent.mkdir(parents=True, exist_ok=True)
    command = [
        VLLM, "bench", "serve", "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
        "--model", model_id, "--tokenizer", tokenizer, "--dataset-name", "random",
        "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len), "--ignore-eos",
        "--num-prompts", str(args.num_prompts), "--max-concurrency", str(args.concurrency), "--seed", str(seed),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--result-dir", str(result_file.parent), "--result-filename", result_file.name,
    ]  # fmt: skip
    print(f"  bench {name}: {shlex.join(command[1:])}", flush=True)
    before = snapshot()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL if not args.verbose else None)
    result = json.loads(result_file.read_text())
    result["cpu_seconds_by_role"] = cpu_seconds_by_role(before, snapshot())
    return result


def summary(result: dict) -> dict:
    return {
        "completed": result["completed"],
        "failed": result.get("failed", result["num_prompts"] - result["completed"]),
        "output_tok_s": result["output_throughput"],
        "ttft_p50_ms": result["median_ttft_ms"],
        "ttft_p99_ms": result["p99_ttft_ms"],
        "tpot_p50_ms": result["median_tpot_ms"],
        "duration_s": result["duration"],
        "cpu": result["cpu_seconds_by_role"],
    }


def report(rows: dict[str, dict], args: argparse.Namespace, command: str) -> str:
    bare = rows["bare vLLM"]
    lines = [
        "# Meridian end to end vs bare vLLM",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on this machine ({os.cpu_count()} cores, no GPU), "
        f"SmolLM2-135M-Instruct on vLLM CPU. Workload: `vllm bench serve`, random dataset, "
        f"{args.input_len} tokens in / {args.output_len} out (ignore_eos), {args.num_prompts} requests, "
        f"concurrency {args.concurrency}; random prompts seeded 0, 1, 2 per target, so none hits another's "
        "prefix cache. One run of each, in this order, in one invocation:",
        "",
        f"    {command}",
        "",
        "| target | completed | failed | output tok/s | × bare | TTFT p50 ms | Δ p50 ms | TTFT p99 ms | TPOT p50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['completed']} | {row['failed']} | {row['output_tok_s']:.1f} "
            f"| {row['output_tok_s'] / bare['output_tok_s']:.3f} | {row['ttft_p50_ms']:.1f} "
            f"| {row['ttft_p50_ms'] - bare['ttft_p50_ms']:+.1f} | {row['ttft_p99_ms']:.1f} | {row['tpot_p50_ms']:.1f} |"
        )
    roles = sorted(
        {role for row in rows.values() for role in row["cpu"]},
        key=lambda r: -max(row["cpu"].get(r, 0) for row in rows.values()),
    )
    lines += [
        "",
        "## Where the time goes: CPU seconds per process role during each run",
        "",
        "Two cores: whatever runs beside the vLLM worker takes CPU from it. (`psutil` CPU time",
        "of every process, by role, between the start and the end of each `vllm bench serve`.)",
        "",
        "| role | " + " | ".join(rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for role in roles:
        lines.append(f"| {role} | " + " | ".join(f"{row['cpu'].get(role, 0.0):.1f}" for row in rows.values()) + " |")
    lines.append("| run duration (s) | " + " | ".join(f"{row['duration_s']:.1f}" for row in rows.values()) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO / "configs" / "bench.yaml")
    parser.add_argument("--num-prompts", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--verbose", action="store_true", help="show vllm bench output")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/e2e_vs_vllm.py", *sys.argv[1:]])

    spec = load_spec(args.spec)
    model = spec.models[0]
    model_path = models.pull(model.source)
    rows: dict[str, dict] = {}
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)

    print("bare vLLM", flush=True)
    with bare_vllm(
        model_path, model.id, model.max_model_len, model.kv_cache_gib, RESULTS / "raw" / "vllm-serve.log"
    ) as url:
        rows["bare vLLM"] = summary(run_bench("vllm", 0, url, model.id, model_path, args))
    print("Meridian", flush=True)
    with meridian(args.spec) as (router_url, region_url):
        rows["Ray Serve region app, no router"] = summary(
            run_bench("region", 1, region_url, model.id, model_path, args)
        )
        rows["Meridian (router → region)"] = summary(run_bench("meridian", 2, router_url, model.id, model_path, args))

    text = report(rows, args, command)
    (RESULTS / "e2e_vs_vllm.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
