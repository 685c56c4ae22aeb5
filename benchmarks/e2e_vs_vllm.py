"""Meridian's end-to-end path against bare `vllm serve`, with vLLM's own load generator.

Three targets, the same engine settings, the same `vllm bench serve` workload:

1. bare vLLM: `vllm serve` on the converted default model;
2. the Ray Serve region app alone: the model's own app (Serve proxy -> the LLMServer
   replica's vLLM app -> vLLM);
3. Meridian: geo router -> that same app.

(2) is not asked for, but it splits Meridian's overhead into the router's share and
Ray Serve's share.

Both stacks (the bare `vllm serve` and the one-region platform) are started first and
stay up for the whole measurement; while one target is measured the other stack is
idle, and its CPU use is accounted. Every target then gets a short warm-up load (not
recorded), and the measurement runs `--repeats` rounds, each round every target once
in the order above. Every (target, round) has its own prompt seed: the region app and
Meridian share one engine, whose prefix cache would otherwise flatter the second, and
a repeated seed would flatter a target's own later rounds. Ratios and differences are
taken round by round (round i of one target against round i of the other) and reported
as their median and min–max.

The report goes to benchmarks/results/e2e_vs_vllm.md; vllm bench's JSON for every
round to benchmarks/results/raw/e2e_vs_vllm-<target>-<round>.json and everything the
report is rendered from to benchmarks/results/raw/e2e_vs_vllm.json.

    .venv/bin/python benchmarks/e2e_vs_vllm.py            # or: make bench
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.cpu_accounting import cpu_seconds_by_role, snapshot  # noqa: E402
from benchmarks.servers import (  # noqa: E402
    RAW,
    VLLM,
    command_line,
    difference,
    machine,
    metric_table,
    pairwise,
    process_tree,
    publish,
    ratio,
    report_header,
    served,
    spread,
    vllm_serve_command,
)
from meridian import launcher  # noqa: E402
from meridian_core.spec import PlatformSpec, load_spec, model_route  # noqa: E402
from meridian_host import models, processes  # noqa: E402
from meridian_host.platform_state import PlatformState  # noqa: E402
from meridian_host.region_tokens import region_token  # noqa: E402

BARE_VLLM_PORT = 28123

# (key, name) in measurement order within every round.
TARGETS = [
    ("vllm", "bare vLLM"),
    ("region", "Ray Serve region app, no router"),
    ("meridian", "Meridian (router → region)"),
]
BARE_STACK, PLATFORM_STACK, OTHER = "bare vLLM server", "Meridian platform", "not this run's"
# Pairwise comparisons: (numerator key, denominator key).
COMPARISONS = [("region", "vllm"), ("meridian", "vllm"), ("meridian", "region")]
# (summary field, label, format, whether a difference in ms is meaningful beside the ratio)
METRICS = [
    ("output_tok_s", "Output tokens/s (higher is better)", ".1f", False),
    ("ttft_p50_ms", "TTFT p50, ms", ".1f", True),
    ("ttft_p99_ms", "TTFT p99, ms", ".1f", True),
    ("tpot_p50_ms", "TPOT p50, ms", ".2f", True),
    ("duration_s", "Run duration, s", ".1f", False),
]
WARMUP_SEED_BASE = 10_000


def seed_of(round_index: int, target_index: int) -> int:
    """Distinct for every (target, round); round 0 keeps the seeds 0, 1, 2 of earlier runs."""
    return round_index * len(TARGETS) + target_index


@contextlib.contextmanager
def bare_vllm(
    model_path: str, model_id: str, max_model_len: int, kv_cache_gib: int, log: Path
) -> Iterator[tuple[str, subprocess.Popen]]:
    command = vllm_serve_command(model_path, model_id, BARE_VLLM_PORT, max_model_len)
    url = f"http://127.0.0.1:{BARE_VLLM_PORT}"
    with served(command, f"{url}/v1/models", log, env={"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}) as process:
        yield url, process


@contextlib.contextmanager
def meridian_platform(spec_path: Path) -> Iterator[PlatformState]:
    """A one-region platform, up for the duration of the block. Its region answers only
    its token's holders: the token is the OpenAI key (`OPENAI_API_KEY`) that `vllm bench`
    and the calibration send meanwhile; bare vLLM and the router ignore it."""
    spec = load_spec(spec_path)
    launcher.down(spec.name)
    state, _ = launcher.up(spec_path, on_step=lambda message: print(f"  meridian: {message}", flush=True))
    try:
        os.environ["OPENAI_API_KEY"] = region_token(state, spec.regions[0])
        yield state
    finally:
        os.environ.pop("OPENAI_API_KEY", None)
        launcher.down(spec.name)


@contextlib.contextmanager
def meridian(spec_path: Path) -> Iterator[tuple[str, str]]:
    """Yield (router URL, the first model's app URL in its region) of a one-region platform."""
    spec = load_spec(spec_path)
    with meridian_platform(spec_path) as state:
        yield state.router_url, model_app_url(spec)


def model_app_url(spec: PlatformSpec) -> str:
    """Where the region's replicas of the spec's first model answer the OpenAI API."""
    return spec.region_endpoint(spec.regions[0]) + model_route(spec.models[0].id)


class Stacks:
    """Which stack a process belongs to: the bare vLLM server's tree or the platform's
    marked processes; anything else with a role is another user's."""

    def __init__(self, bare_pid: int, platform_id: str) -> None:
        self.bare_pid, self.platform_id = bare_pid, platform_id
        self.bare: set[int] = set()
        self.platform: set[int] = set()

    def refresh(self) -> Stacks:
        self.bare = {p.pid for p in process_tree(self.bare_pid)}
        self.platform = {p.pid for p in processes.marked_processes(self.platform_id)}
        return self

    def __call__(self, pid: int) -> str:
        return BARE_STACK if pid in self.bare else PLATFORM_STACK if pid in self.platform else OTHER

    def rss_gib(self) -> dict[str, float]:
        rss = {BARE_STACK: 0.0, PLATFORM_STACK: 0.0}
        for stack, pids in ((BARE_STACK, self.bare), (PLATFORM_STACK, self.platform)):
            for pid in pids:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    rss[stack] += psutil.Process(pid).memory_info().rss / 2**30
        return rss


def bench_command(base_url: str, model_id: str, tokenizer: str, args: argparse.Namespace, seed: int) -> list[str]:
    return [
        VLLM, "bench", "serve", "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
        "--model", model_id, "--tokenizer", tokenizer, "--dataset-name", "random",
        "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len), "--ignore-eos",
        "--max-concurrency", str(args.concurrency), "--seed", str(seed),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
    ]  # fmt: skip


def warm_up(key: str, seed: int, base_url: str, model_id: str, tokenizer: str, args: argparse.Namespace) -> float:
    """A short load of the same shape, not recorded; returns its wall time."""
    command = [*bench_command(base_url, model_id, tokenizer, args, seed), "--num-prompts", str(args.warmup_prompts)]
    print(f"  warm-up {key}: {args.warmup_prompts} prompts, seed {seed}", flush=True)
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=None if args.verbose else subprocess.DEVNULL)
    return time.monotonic() - started


def run_bench(
    key: str, round_index: int, seed: int, base_url: str, model_id: str, tokenizer: str,
    args: argparse.Namespace, stacks: Stacks,
) -> dict:  # fmt: skip
    """One recorded `vllm bench serve` run, with the CPU every process role used during it."""
    result_file = RAW / f"e2e_vs_vllm-{key}-{round_index + 1}.json"
    command = [
        *bench_command(base_url, model_id, tokenizer, args, seed), "--num-prompts", str(args.num_prompts),
        "--save-result", "--result-dir", str(result_file.parent), "--result-filename", result_file.name,
    ]  # fmt: skip
    print(f"  round {round_index + 1} {key}: seed {seed}", flush=True)
    before = snapshot(stacks.refresh())
    subprocess.run(command, check=True, stdout=None if args.verbose else subprocess.DEVNULL)
    after = snapshot(stacks.refresh())
    result = json.loads(result_file.read_text())
    summary = {
        "seed": seed,
        "completed": result["completed"],
        "failed": result.get("failed", result["num_prompts"] - result["completed"]),
        "output_tok_s": result["output_throughput"],
        "ttft_p50_ms": result["median_ttft_ms"],
        "ttft_p99_ms": result["p99_ttft_ms"],
        "tpot_p50_ms": result["median_tpot_ms"],
        "duration_s": result["duration"],
        "cpu": cpu_seconds_by_role(before, after),
    }
    print(
        f"    {summary['output_tok_s']:.1f} tok/s, TTFT p50 {summary['ttft_p50_ms']:.0f} ms, "
        f"{summary['failed']} failed",
        flush=True,
    )
    return summary


def idle_cpu(stacks: Stacks, seconds: float) -> dict[str, float]:
    """CPU seconds per role over `seconds` with every server up and no load."""
    before = snapshot(stacks.refresh())
    time.sleep(seconds)
    return cpu_seconds_by_role(before, snapshot(stacks.refresh()))


def stack_total(cpu: dict[str, float], stack: str) -> float:
    return sum(seconds for role, seconds in cpu.items() if role.startswith(f"{stack}: "))


def idle_stack_of(key: str) -> str:
    """The stack that is not under load while `key` is measured."""
    return PLATFORM_STACK if key == "vllm" else BARE_STACK


def render_report(results: dict) -> str:
    """The markdown report; everything in it comes from `results` (see main)."""
    names = {key: name for key, name in results["targets"]}
    runs: dict[str, list[dict]] = results["runs"]
    workload = results["workload"]
    repeats = results["repeats"]
    lines = report_header(
        "Meridian end to end vs bare vLLM",
        results["command"],
        datetime.fromisoformat(results["started"]),
        results["machine"],
        repeats,
    )
    memory = results["memory_all_up"]
    lines += [
        f"- model: {workload['model']} on vLLM CPU; the bare server and the platform each run one engine",
        f"- workload: `vllm bench serve`, random dataset, {workload['input_len']} tokens in / "
        f"{workload['output_len']} out (ignore_eos), {workload['num_prompts']} requests, "
        f"concurrency {workload['concurrency']}",
        f"- warm-up: {workload['warmup_prompts']} requests of the same shape against every target before the "
        "first round, not recorded",
        "- targets, in the order of every round: " + ", ".join(names[key] for key in runs),
        "- prompt seeds (target: round 1, 2, ...): "
        + "; ".join(f"{names[key]}: {', '.join(str(r['seed']) for r in runs[key])}" for key in runs)
        + f"; warm-up seeds {', '.join(str(s) for s in workload['warmup_seeds'])}",
        f"- both stacks up for the whole measurement: {memory['available_gib']:.1f} GiB of memory available with "
        f"both up; resident memory summed over each stack's processes (shared pages counted in each): "
        f"bare vLLM server {memory['rss_gib'][BARE_STACK]:.1f} GiB, "
        f"Meridian platform {memory['rss_gib'][PLATFORM_STACK]:.1f} GiB",
        f"- wall time: {results['timings']['startup_s']:.0f} s to start both stacks, "
        f"{results['timings']['warmup_s']:.0f} s of warm-up, {results['timings']['measure_s']:.0f} s of "
        f"measurement, {results['timings']['total_s']:.0f} s in all",
        "",
        "Each table: the targets' values per round, then the comparisons, each computed round by round "
        "(round i against round i) and summarised by its median and min–max.",
    ]

    completed = ", ".join(
        f"{names[key]} {sum(r['completed'] for r in runs[key])}/{sum(r['completed'] + r['failed'] for r in runs[key])}"
        for key in runs
    )
    lines += ["", f"Requests completed over all rounds: {completed}."]

    for field, label, spec, with_difference in METRICS:
        rows = [(names[key], [r[field] for r in runs[key]], spec) for key in runs]
        for a, b in COMPARISONS:
            if a in runs and b in runs:
                values_a, values_b = [r[field] for r in runs[a]], [r[field] for r in runs[b]]
                rows.append((f"{names[a]} ÷ {names[b]}", pairwise(values_a, values_b, ratio), ".3f"))
                if with_difference:
                    rows.append((f"{names[a]} − {names[b]}", pairwise(values_a, values_b, difference), "+.1f"))
        lines += ["", f"### {label}", "", *metric_table("target / comparison", rows)]

    lines += cpu_section(results, names)
    return "\n".join(lines) + "\n"


def cpu_section(results: dict, names: dict[str, str]) -> list[str]:
    runs: dict[str, list[dict]] = results["runs"]
    idle, idle_s = results["idle_cpu"], results["idle_seconds"]
    roles = sorted(
        {role for rounds in runs.values() for r in rounds for role in r["cpu"]} | set(idle),
        key=lambda role: -max([r["cpu"].get(role, 0.0) for rounds in runs.values() for r in rounds] + [0.0]),
    )
    roles = [role for role in roles if not role.startswith(f"{OTHER}: ")] + [
        role for role in roles if role.startswith(f"{OTHER}: ")
    ]

    def cell(values: list[float], spec: str = ".1f") -> str:
        median, low, high = spread(values)
        return f"{median:{spec}} ({low:{spec}}–{high:{spec}})"

    lines = [
        "",
        "## CPU seconds per process role during each measured run",
        "",
        "`psutil` user + system CPU time of every process with a role, between the start and the end of "
        "each recorded `vllm bench serve` (the load generator itself is not counted); median (min–max) "
        f'over the rounds. Processes are grouped by stack; "{OTHER}" are processes of another user of '
        "this machine that match a role. The first column is the same accounting over "
        f"{idle_s:.0f} s with every server up and no load.",
        "",
        f"| role | idle {idle_s:.0f} s | " + " | ".join(names[key] for key in runs) + " |",
        "|---|---|" + "---|" * len(runs),
    ]
    for role in roles:
        lines.append(
            f"| {role} | {idle.get(role, 0.0):.1f} | "
            + " | ".join(cell([r["cpu"].get(role, 0.0) for r in runs[key]]) for key in runs)
            + " |"
        )
    lines.append(
        "| **idle stack (the one not under load), total** | – | "
        + " | ".join(cell([stack_total(r["cpu"], idle_stack_of(key)) for r in runs[key]]) for key in runs)
        + " |"
    )
    lines.append(
        "| idle stack, cores used (CPU s / run s) | "
        + f"{BARE_STACK} {stack_total(idle, BARE_STACK) / idle_s:.3f}, "
        + f"{PLATFORM_STACK} {stack_total(idle, PLATFORM_STACK) / idle_s:.3f} | "
        + " | ".join(
            cell([stack_total(r["cpu"], idle_stack_of(key)) / r["duration_s"] for r in runs[key]], ".3f")
            for key in runs
        )
        + " |"
    )
    lines.append(
        "| run duration (s) | "
        + f"{idle_s:.1f} | "
        + " | ".join(cell([r["duration_s"] for r in runs[key]]) for key in runs)
        + " |"
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO / "configs" / "bench.yaml")
    parser.add_argument("--num-prompts", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; every round runs every target once")
    parser.add_argument("--warmup-prompts", type=int, default=32, help="per target, before the first round")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="CPU accounting with no load, both up")
    parser.add_argument("--verbose", action="store_true", help="show vllm bench output")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    command = command_line()
    started = datetime.now(UTC)
    clock = time.monotonic()
    machine_info = machine()

    spec = load_spec(args.spec)
    model = spec.models[0]
    model_path = models.pull(model.source)
    RAW.mkdir(parents=True, exist_ok=True)
    for stale in RAW.glob("e2e_vs_vllm-*.json"):  # one report, one run
        stale.unlink()
    runs: dict[str, list[dict]] = {key: [] for key, _ in TARGETS}
    warmup_seeds = [WARMUP_SEED_BASE + index for index in range(len(TARGETS))]

    print("starting bare vLLM and the Meridian platform; both stay up", flush=True)
    with (
        bare_vllm(model_path, model.id, model.max_model_len, model.kv_cache_gib, RAW / "vllm-serve.log") as (
            bare_url,
            bare_process,
        ),
        meridian_platform(args.spec) as state,
    ):
        urls = {"vllm": bare_url, "region": model_app_url(spec), "meridian": state.router_url}
        stacks = Stacks(bare_process.pid, state.platform_id).refresh()
        memory_all_up = {"available_gib": psutil.virtual_memory().available / 2**30, "rss_gib": stacks.rss_gib()}
        startup_s = time.monotonic() - clock

        print(f"idle: {args.idle_seconds:g} s with both stacks up and no load", flush=True)
        idle = idle_cpu(stacks, args.idle_seconds)

        clock = time.monotonic()
        for index, (key, _) in enumerate(TARGETS):
            warm_up(key, warmup_seeds[index], urls[key], model.id, model_path, args)
        warmup_s = time.monotonic() - clock

        clock = time.monotonic()
        for round_index in range(args.repeats):
            for index, (key, _) in enumerate(TARGETS):
                runs[key].append(
                    run_bench(
                        key, round_index, seed_of(round_index, index), urls[key], model.id, model_path, args, stacks
                    )
                )
        measure_s = time.monotonic() - clock
        machine_info["load_average_1m_end"] = os.getloadavg()[0]

    results = {
        "command": command,
        "started": started.isoformat(),
        "machine": machine_info,
        "repeats": args.repeats,
        "workload": {
            "model": model.id,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "num_prompts": args.num_prompts,
            "concurrency": args.concurrency,
            "warmup_prompts": args.warmup_prompts,
            "warmup_seeds": warmup_seeds,
        },
        "targets": TARGETS,
        "runs": runs,
        "idle_seconds": args.idle_seconds,
        "idle_cpu": idle,
        "memory_all_up": memory_all_up,
        "timings": {
            "startup_s": startup_s,
            "warmup_s": warmup_s,
            "measure_s": measure_s,
            "total_s": (datetime.now(UTC) - started).total_seconds(),
        },
    }
    publish("e2e_vs_vllm", results, render_report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
