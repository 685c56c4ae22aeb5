"""What a router adds: Meridian's geo router and vllm-router (Rust) in front of the same
fast streaming upstream, against hitting the upstream directly.

Two loads from an aiohttp client, each a bounded number of streamed chat requests:

- latency: `--concurrency` streams at once (default 200), each `--tokens` events
  `--gap-ms` apart; TTFT (to the first body bytes) p50/p99, and what each router adds
  over the direct path;
- throughput: `--throughput-concurrency` streams at once (default 64) of 8 back-to-back
  events; requests/s and events/s.

For each load the upstream and both routers are started once and stay up; every target
gets a warm-up of `--warmup-requests` (not recorded), then `--repeats` rounds run every
target once, in the same order (direct, Meridian, vllm-router). Comparisons are taken
round by round (round i against round i) and reported as their median and min–max.
Events are the SSE `data:` events of the answer; the `data: [DONE]` sentinel is not
counted. Both routers log at `--log-level` (default info: what each runs at unless told
otherwise, and what `meridian up` runs Meridian's router at).

    .venv/bin/python benchmarks/router_overhead.py         # writes benchmarks/results/router_overhead.md

Everything (client, routers, upstream) shares this machine's cores, as it would on a
2-core box in production; the client's own cost is in the direct figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.servers import (  # noqa: E402
    RAW,
    command_line,
    difference,
    machine,
    metric_table,
    pairwise,
    publish,
    ratio,
    report_header,
    served,
    spread,
    tree_cpu_seconds,
)

BIN = Path(sys.executable).parent
UPSTREAM_PORT, MERIDIAN_PORT, VLLM_ROUTER_PORT = 28301, 28302, 28303
BODY = b'{"model": "bench-model", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
DONE = b"data: [DONE]"
# (key, name) in measurement order within every round.
TARGETS = [("direct", "direct (no router)"), ("meridian", "Meridian geo router"), ("vllm-router", "vllm-router (Rust)")]
# Meridian's router at a chosen root log level; `python -m geo_router SPEC` is what `meridian up`
# runs, at INFO. Configuring the root logger first makes geo_router's own basicConfig a no-op.
MERIDIAN_AT_LEVEL = (
    "import logging, sys; "
    "logging.basicConfig(level=getattr(logging, sys.argv[1].upper()), "
    "format='%(asctime)s %(levelname)s %(name)s: %(message)s'); "
    "from geo_router.__main__ import main; sys.exit(main(sys.argv[2:]))"
)


@dataclass
class LoadResult:
    requests: int
    failed: int
    seconds: float
    events: int
    errors: dict[str, int]
    ttft_ms: list[float] = field(repr=False)
    cpu_s: dict[str, float] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.ttft_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")

    @property
    def requests_per_s(self) -> float:
        return (self.requests - self.failed) / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    def summary(self) -> dict:
        """What the report and the raw JSON keep of one measurement."""
        record = {k: v for k, v in asdict(self).items() if k != "ttft_ms"}
        record |= {
            "ttft_p50_ms": self.percentile(50),
            "ttft_p99_ms": self.percentile(99),
            "requests_per_s": self.requests_per_s,
            "events_per_s": self.events_per_s,
        }
        return record


def count_events(buffer: bytes) -> tuple[int, bytes]:
    """SSE `data:` events completed in `buffer` (not the [DONE] sentinel), and the rest."""
    *complete, rest = buffer.split(b"\n\n")
    return sum(1 for event in complete if event.startswith(b"data:") and event.strip() != DONE), rest


async def drive(url: str, concurrency: int, total: int) -> LoadResult:
    """`total` streamed requests, `concurrency` at a time; every loop is bounded."""
    ttfts: list[float] = []
    errors: dict[str, int] = {}
    events = failed = 0
    remaining = total
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining, events, failed
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                async with session.post(url, data=BODY, headers={"content-type": "application/json"}) as response:
                    if response.status != 200:
                        failed += 1
                        errors[f"HTTP {response.status}"] = errors.get(f"HTTP {response.status}", 0) + 1
                        await response.read()
                        continue
                    first = True
                    buffer = b""
                    async for chunk in response.content.iter_any():
                        if first:
                            ttfts.append((time.perf_counter() - started) * 1000)
                            first = False
                        counted, buffer = count_events(buffer + chunk)
                        events += counted
            except (TimeoutError, aiohttp.ClientError) as error:
                failed += 1
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return LoadResult(total, failed, elapsed, events, errors, ttfts)


def meridian_spec(directory: Path) -> Path:
    spec = {
        "name": "router-bench",
        "models": [{"id": "bench-model"}],
        "regions": [
            {
                "name": "bench/upstream",
                "location": {"lat": 39.04, "lon": -77.49},
                "endpoint": f"http://127.0.0.1:{UPSTREAM_PORT}",
            }
        ],
        "router": {"port": MERIDIAN_PORT},
    }
    path = directory / "router-bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def upstream_command(tokens: int, gap_ms: float) -> list[str]:
    """The fake upstream on UPSTREAM_PORT, answering `tokens` events `gap_ms` apart."""
    script = str(REPO / "benchmarks" / "fake_upstream.py")
    return [sys.executable, script, "--port", str(UPSTREAM_PORT), "--tokens", str(tokens), "--gap-ms", str(gap_ms)]


def vllm_router_command(log_level: str) -> list[str]:
    """vllm-router on VLLM_ROUTER_PORT, round robin over the fake upstream."""
    return [
        str(BIN / "vllm-router"), "--host", "127.0.0.1", "--port", str(VLLM_ROUTER_PORT),
        "--worker-urls", f"http://127.0.0.1:{UPSTREAM_PORT}", "--policy", "round_robin", "--log-level", log_level,
    ]  # fmt: skip


def wait_serving(url: str, timeout_s: float = 60) -> None:
    """Until one streamed request through `url` answers 200 (Meridian answers 503 until
    its first poll has found the region healthy)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if (
                httpx.post(url, content=BODY, headers={"content-type": "application/json"}, timeout=10).status_code
                == 200
            ):
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not serve a request within {timeout_s} s")


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far per named process tree; this process without its children (the
    servers it started are counted under their own names)."""
    return {name: tree_cpu_seconds(pid, descendants=pid != os.getpid()) for name, pid in pids.items()}


def line_count(path: Path) -> int:
    with open(path, "rb") as log:
        return sum(1 for _ in log)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=200, help="latency load: streams at once")
    parser.add_argument("--requests", type=int, default=2000, help="latency load: requests per measurement")
    parser.add_argument("--tokens", type=int, default=32, help="latency load: events per answer")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="latency load: gap between events")
    parser.add_argument("--throughput-concurrency", type=int, default=64, help="throughput load: streams at once")
    parser.add_argument("--throughput-requests", type=int, default=3000, help="throughput load: requests")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; every round measures every target once")
    parser.add_argument("--warmup-requests", type=int, default=200, help="per target and load, not recorded")
    parser.add_argument("--log-level", choices=["info", "warning"], default="info", help="both routers' log level")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    command = command_line()
    started = datetime.now(UTC)
    machine_info = machine()
    RAW.mkdir(parents=True, exist_ok=True)
    loads = {
        "latency": {
            "concurrency": args.concurrency,
            "requests": args.requests,
            "tokens": args.tokens,
            "gap_ms": args.gap_ms,
        },
        "throughput": {
            "concurrency": args.throughput_concurrency,
            "requests": args.throughput_requests,
            "tokens": 8,
            "gap_ms": 0.0,
        },
    }
    runs: dict[str, dict[str, list[dict]]] = {load: {key: [] for key, _ in TARGETS} for load in loads}
    log_lines: dict[str, dict[str, int]] = {}
    timings: dict[str, float] = {}

    with tempfile.TemporaryDirectory() as scratch:
        env_spec = meridian_spec(Path(scratch))
        routers = {
            "meridian": [sys.executable, "-c", MERIDIAN_AT_LEVEL, args.log_level, str(env_spec)],
            "vllm-router": vllm_router_command(args.log_level),
        }
        base_urls = {
            "direct": f"http://127.0.0.1:{UPSTREAM_PORT}",
            "meridian": f"http://127.0.0.1:{MERIDIAN_PORT}",
            "vllm-router": f"http://127.0.0.1:{VLLM_ROUTER_PORT}",
        }
        for load, shape in loads.items():
            clock = time.monotonic()
            upstream = upstream_command(shape["tokens"], shape["gap_ms"])
            with contextlib.ExitStack() as stack:
                pids = {
                    "fake upstream": stack.enter_context(
                        served(upstream, f"{base_urls['direct']}/health", RAW / "fake-upstream.log", ready_timeout_s=60)
                    ).pid,
                }
                logs = {}
                for key, router in routers.items():
                    logs[key] = RAW / f"router-{key}.log"
                    process = stack.enter_context(
                        served(router, f"{base_urls[key]}/v1/models", logs[key], ready_timeout_s=60)
                    )
                    pids[dict(TARGETS)[key]] = process.pid
                pids["load generator (this process)"] = os.getpid()
                urls = {key: f"{base}/v1/chat/completions" for key, base in base_urls.items()}
                for url in urls.values():
                    wait_serving(url)
                timings[f"{load} startup_s"] = time.monotonic() - clock

                clock = time.monotonic()
                for key, _ in TARGETS:
                    print(f"{load}: warm-up {key}", flush=True)
                    asyncio.run(drive(urls[key], shape["concurrency"], args.warmup_requests))
                timings[f"{load} warmup_s"] = time.monotonic() - clock

                clock = time.monotonic()
                lines_before = {key: line_count(path) for key, path in logs.items()}
                for round_index in range(args.repeats):
                    for key, _ in TARGETS:
                        before = cpu_of(pids)
                        outcome = asyncio.run(drive(urls[key], shape["concurrency"], shape["requests"]))
                        outcome.cpu_s = {name: seconds - before[name] for name, seconds in cpu_of(pids).items()}
                        runs[load][key].append(outcome.summary())
                        print(
                            f"{load} round {round_index + 1} {key}: {outcome.requests_per_s:.0f} req/s, "
                            f"TTFT p50 {outcome.percentile(50):.1f} ms, p99 {outcome.percentile(99):.1f} ms, "
                            f"{outcome.failed} failed",
                            flush=True,
                        )
                log_lines[load] = {key: line_count(path) - lines_before[key] for key, path in logs.items()}
                timings[f"{load} measure_s"] = time.monotonic() - clock

    machine_info["load_average_1m_end"] = os.getloadavg()[0]
    results = {
        "command": command,
        "started": started.isoformat(),
        "machine": machine_info,
        "repeats": args.repeats,
        "log_level": args.log_level,
        "warmup_requests": args.warmup_requests,
        "loads": loads,
        "targets": TARGETS,
        "runs": runs,
        "log_lines": log_lines,
        "timings": {**timings, "total_s": (datetime.now(UTC) - started).total_seconds()},
    }
    publish("router_overhead", results, render_report(results))
    return 0


# Per load: (field, label, format, comparisons as (a, b, "÷" or "−")).
LATENCY_VS_DIRECT = [("meridian", "direct", "−"), ("vllm-router", "direct", "−")]
HEAD_TO_HEAD = [("meridian", "vllm-router", "÷"), ("meridian", "vllm-router", "−")]
METRICS = {
    "latency": [
        ("ttft_p50_ms", "TTFT p50, ms", ".2f", LATENCY_VS_DIRECT + HEAD_TO_HEAD),
        ("ttft_p99_ms", "TTFT p99, ms", ".2f", LATENCY_VS_DIRECT + HEAD_TO_HEAD),
        ("requests_per_s", "Requests/s", ".0f", [("meridian", "vllm-router", "÷"), ("meridian", "direct", "÷")]),
        ("events_per_s", "Events/s", ".0f", [("meridian", "vllm-router", "÷"), ("meridian", "direct", "÷")]),
        ("failed", "Failed requests", ".0f", []),
    ],
    "throughput": [
        (
            "requests_per_s",
            "Requests/s",
            ".0f",
            [("meridian", "vllm-router", "÷"), ("direct", "vllm-router", "÷"), ("meridian", "direct", "÷")],
        ),
        ("events_per_s", "Events/s", ".0f", [("meridian", "vllm-router", "÷"), ("direct", "vllm-router", "÷")]),
        ("failed", "Failed requests", ".0f", []),
    ],
}


def render_report(results: dict) -> str:
    """The markdown report; everything in it comes from `results` (see main)."""
    names = dict(results["targets"])
    lines = report_header(
        "Router overhead: Meridian vs vllm-router vs direct",
        results["command"],
        datetime.fromisoformat(results["started"]),
        results["machine"],
        results["repeats"],
    )
    lines += [
        "- everything on loopback on this machine: the client (aiohttp, in the benchmark's own process), "
        "both routers and the fake upstream (`benchmarks/fake_upstream.py`)",
        f"- both routers at log level `{results['log_level']}` (the level each runs at by default, and the one "
        "`meridian up` runs Meridian's router at)"
        if results["log_level"] == "info"
        else f"- both routers at log level `{results['log_level']}`",
        f"- warm-up: {results['warmup_requests']} requests per target and load before the first round, not recorded",
        "- targets, in the order of every round: " + ", ".join(names[key] for key, _ in results["targets"]),
        "- events: SSE `data:` events received; the `data: [DONE]` sentinel is not counted",
        "- TTFT: from sending the request to the first body bytes; percentiles by nearest rank",
        "",
        "Each table: the targets' values per round, then the comparisons, each computed round by round "
        "(round i against round i) and summarised by its median and min–max.",
    ]
    for load, metrics in METRICS.items():
        shape = results["loads"][load]
        runs = results["runs"][load]
        gap = f" {shape['gap_ms']:g} ms apart" if shape["gap_ms"] else " back to back"
        lines += [
            "",
            f"## {load.capitalize()} load",
            "",
            f"{shape['concurrency']} concurrent streams, {shape['requests']} requests per measurement, "
            f"{shape['tokens']} SSE events each{gap}. Wall time: "
            f"{results['timings'][f'{load} startup_s']:.0f} s to start, "
            f"{results['timings'][f'{load} warmup_s']:.0f} s of warm-up, "
            f"{results['timings'][f'{load} measure_s']:.0f} s of measurement. Log lines the routers wrote during "
            "the measurement: "
            + ", ".join(
                f"{names[key]} {count} ({count / max(1, len(runs[key]) * shape['requests']):.2f} per request it served)"
                for key, count in results["log_lines"][load].items()
            )
            + ".",
        ]
        for field_name, label, spec, comparisons in metrics:
            rows = [(names[key], [r[field_name] for r in runs[key]], spec) for key in runs]
            for a, b, op in comparisons:
                values_a, values_b = [r[field_name] for r in runs[a]], [r[field_name] for r in runs[b]]
                if op == "÷":
                    rows.append((f"{names[a]} ÷ {names[b]}", pairwise(values_a, values_b, ratio), ".2f"))
                else:
                    rows.append((f"{names[a]} − {names[b]}", pairwise(values_a, values_b, difference), "+.2f"))
            lines += ["", f"### {load}: {label}", "", *metric_table("target / comparison", rows)]
        lines += cpu_table(load, runs, names, shape["requests"])
    return "\n".join(lines) + "\n"


def cpu_table(load: str, runs: dict[str, list[dict]], names: dict[str, str], requests: int) -> list[str]:
    processes = list(next(iter(runs.values()))[0]["cpu_s"])

    def cell(values: list[float]) -> str:
        median, low, high = spread(values)
        return f"{median:.2f} ({low:.2f}–{high:.2f})"

    lines = [
        "",
        f"### {load}: CPU seconds per process during each measurement",
        "",
        "`psutil` user + system CPU time, median (min–max) over the rounds; a router not under load is idle "
        "but up (Meridian polls the upstream's `/status`).",
        "",
        "| process | " + " | ".join(f"measuring {names[key]}" for key in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for process in processes:
        lines.append(
            f"| {process} | " + " | ".join(cell([r["cpu_s"][process] for r in runs[key]]) for key in runs) + " |"
        )
    lines.append(
        "| measurement wall time (s) | " + " | ".join(cell([r["seconds"] for r in runs[key]]) for key in runs) + " |"
    )
    # When every process shares the machine's cores and they are nearly all busy, requests/s
    # is cores busy ÷ CPU per request: only the CPU a router spends per request moves it.
    lines.append(
        "| all processes: cores busy (CPU s ÷ wall s) | "
        + " | ".join(cell([sum(r["cpu_s"].values()) / r["seconds"] for r in runs[key]]) for key in runs)
        + " |"
    )
    lines.append(
        "| all processes: CPU ms per request | "
        + " | ".join(cell([1000 * sum(r["cpu_s"].values()) / requests for r in runs[key]]) for key in runs)
        + " |"
    )
    return lines


if __name__ == "__main__":
    sys.exit(main())
