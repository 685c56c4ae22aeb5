"""What a router adds: Meridian's geo router and vllm-router (Rust) in front of the same
fast streaming upstream, against hitting the upstream directly, in one run.

Two loads from an aiohttp client, each a bounded number of streamed chat requests:

- latency: `--concurrency` streams at once (default 200), each `--tokens` events
  `--gap-ms` apart; TTFT (to the first SSE event) p50/p99, and what each router adds
  over the direct path;
- throughput: 64 streams at once of 8 back-to-back events; requests/s and events/s.

    .venv/bin/python benchmarks/router_overhead.py         # writes benchmarks/results/router_overhead.md

Everything (client, routers, upstream) shares this machine's cores, as it would on a
2-core box in production; the client's own cost is in the direct figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.servers import served  # noqa: E402

BIN = Path(sys.executable).parent
RESULTS = REPO / "benchmarks" / "results"
UPSTREAM_PORT, MERIDIAN_PORT, VLLM_ROUTER_PORT = 28301, 28302, 28303
BODY = b'{"model": "bench-model", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'


@dataclass
class LoadResult:
    requests: int
    failed: int
    seconds: float
    ttft_ms: list[float]
    events: int
    errors: dict[str, int]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.ttft_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")

    @property
    def requests_per_s(self) -> float:
        return (self.requests - self.failed) / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


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
                    async for chunk in response.content.iter_any():
                        if first:
                            ttfts.append((time.perf_counter() - started) * 1000)
                            first = False
                        events += chunk.count(b"data: ")
            except (TimeoutError, aiohttp.ClientError) as error:
                failed += 1
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return LoadResult(total, failed, elapsed, ttfts, events, errors)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    parser.add_argument("--throughput-requests", type=int, default=3000)
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/router_overhead.py", *sys.argv[1:]])
    logs = RESULTS / "raw"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, LoadResult]] = {}

    with tempfile.TemporaryDirectory() as scratch:
        env_spec = meridian_spec(Path(scratch))
        targets = [
            ("direct (no router)", None, f"http://127.0.0.1:{UPSTREAM_PORT}"),
            (
                "Meridian geo router",
                [sys.executable, "-m", "geo_router", str(env_spec)],
                f"http://127.0.0.1:{MERIDIAN_PORT}",
            ),
            (
                "vllm-router (Rust)",
                [
                    str(BIN / "vllm-router"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(VLLM_ROUTER_PORT),
                    "--worker-urls",
                    f"http://127.0.0.1:{UPSTREAM_PORT}",
                    "--policy",
                    "round_robin",
                    "--log-level",
                    "warning",
                ],  # fmt: skip
                f"http://127.0.0.1:{VLLM_ROUTER_PORT}",
            ),
        ]
        for load, tokens, gap in (("latency", args.tokens, args.gap_ms), ("throughput", 8, 0.0)):
            upstream = [
                sys.executable, str(REPO / "benchmarks" / "fake_upstream.py"), "--port", str(UPSTREAM_PORT),
                "--tokens", str(tokens), "--gap-ms", str(gap),
            ]  # fmt: skip
            upstream_url = f"http://127.0.0.1:{UPSTREAM_PORT}/health"
            with served(upstream, upstream_url, logs / "fake-upstream.log", ready_timeout_s=60):
                for name, router, base_url in targets:
                    print(f"{name}: {load}", flush=True)
                    with contextlib.ExitStack() as stack:
                        if router is not None:
                            slug = name.split()[0].lower()
                            log = logs / f"router-{slug}.log"
                            stack.enter_context(served(router, f"{base_url}/v1/models", log, ready_timeout_s=60))
                        url = f"{base_url}/v1/chat/completions"
                        asyncio.run(drive(url, 16, 64))  # warm-up
                        if load == "latency":
                            outcome = asyncio.run(drive(url, args.concurrency, args.requests))
                        else:
                            outcome = asyncio.run(drive(url, 64, args.throughput_requests))
                        results.setdefault(name, {})[load] = outcome

    text = report(results, args, command)
    (RESULTS / "router_overhead.md").write_text(text)
    print(text)
    return 0


def report(results: dict[str, dict[str, LoadResult]], args: argparse.Namespace, command: str) -> str:
    direct = results["direct (no router)"]
    peer = results["vllm-router (Rust)"]
    lines = [
        "# Router overhead: Meridian vs vllm-router vs direct",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, everything on loopback, one run:",
        "",
        f"    {command}",
        "",
        f"**Latency load**: {args.concurrency} concurrent streams, {args.requests} requests of {args.tokens} "
        f"SSE events {args.gap_ms:g} ms apart. Added = this target minus direct.",
        "",
        "| target | failed | TTFT p50 ms | TTFT p99 ms | added p50 ms | added p99 ms | req/s | events/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, loads in results.items():
        r = loads["latency"]
        lines.append(
            f"| {name} | {r.failed} | {r.percentile(50):.2f} | {r.percentile(99):.2f} "
            f"| {r.percentile(50) - direct['latency'].percentile(50):+.2f} "
            f"| {r.percentile(99) - direct['latency'].percentile(99):+.2f} "
            f"| {r.requests_per_s:.0f} | {r.events_per_s:.0f} |"
        )
    lines += [
        "",
        f"**Throughput load**: 64 concurrent streams, {args.throughput_requests} requests of 8 back-to-back events.",
        "",
        "| target | failed | req/s | events/s | × vllm-router |",
        "|---|---|---|---|---|",
    ]
    for name, loads in results.items():
        r = loads["throughput"]
        lines.append(
            f"| {name} | {r.failed} | {r.requests_per_s:.0f} | {r.events_per_s:.0f} "
            f"| {r.requests_per_s / peer['throughput'].requests_per_s:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
