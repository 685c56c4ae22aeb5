"""What an idle platform costs per region: CPU and memory with no traffic, in Ray Serve's
high-throughput mode (`ray.high_throughput: true`, the default) and in Serve's default
mode, one after the other in one run.

For each mode: `meridian up` on the spec with `ray.high_throughput` set to that mode
(the spec is otherwise as given), `--settle-seconds` of rest after every region is
ready, then `--idle-seconds` of measurement with no request sent, then `meridian down`.
A region's processes are its Ray cluster's (the process trees of its head's and its
local nodes' `ray start`) and its capacity loop; the router and the global loop are
the platform's. Memory is read at the end of the idle window: RSS (shared pages
counted in every process) and PSS (shared pages split between their users, so the sum
is what the processes hold together).

    .venv/bin/python benchmarks/idle_cost.py      # writes benchmarks/results/idle_cost.md
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.cpu_accounting import role_of  # noqa: E402
from benchmarks.servers import command_line, machine, process_tree, publish, report_header  # noqa: E402
from meridian import launcher  # noqa: E402
from meridian_core.spec import load_spec  # noqa: E402
from meridian_host import processes  # noqa: E402
from meridian_host.platform_state import LocalNodes, PlatformState  # noqa: E402

MODES = [("high_throughput", "Serve high-throughput mode", True), ("default", "Serve default mode", False)]
PLATFORM = "platform (router, global loop)"
GIB = 2**30


def region_pids(state: PlatformState) -> dict[str, set[int]]:
    """Each region's processes: its cluster's process trees and its capacity loop."""
    owned: dict[str, set[int]] = {}
    for name, cluster in state.clusters.items():
        roots = [cluster.head_pid, cluster.capacity_pid]
        roots += [node.pid for node in LocalNodes.load(state, cluster.slug).nodes.values()]
        owned[name] = {p.pid for root in roots if root for p in process_tree(root)}
    return owned


def sample(state: PlatformState) -> dict[int, dict]:
    """Per process of the platform: its group (region or platform), role, CPU seconds so
    far, RSS and PSS in bytes."""
    by_region = region_pids(state)
    group_of = {pid: region for region, pids in by_region.items() for pid in pids}
    taken = {}
    for process in processes.marked_processes(state.platform_id):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            times = process.cpu_times()
            memory = process.memory_full_info()
            taken[process.pid] = {
                "group": group_of.get(process.pid, PLATFORM),
                "role": role_of(process) or "other",
                "cpu_s": times.user + times.system,
                "rss": memory.rss,
                "pss": memory.pss,
            }
    return taken


def idle_cost(spec_path: Path, high_throughput: bool, settle_s: float, idle_s: float) -> dict:
    """Bring the platform up in one Serve mode, measure it idle, bring it down."""
    document = yaml.safe_load(spec_path.read_text())
    document.setdefault("ray", {})["high_throughput"] = high_throughput
    with tempfile.TemporaryDirectory() as scratch:
        mode_spec = Path(scratch) / spec_path.name
        mode_spec.write_text(yaml.safe_dump(document))
        name = load_spec(mode_spec).name
        launcher.down(name)
        clock = time.monotonic()
        state, _ = launcher.up(mode_spec, on_step=lambda message: print(f"  {message}", flush=True))
        startup_s = time.monotonic() - clock
        try:
            time.sleep(settle_s)
            before = sample(state)
            time.sleep(idle_s)
            after = sample(state)
        finally:
            launcher.down(name)
    cpu: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    memory: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(lambda: {"rss": 0.0, "pss": 0.0}))
    for pid, now in after.items():
        cpu[now["group"]][now["role"]] += now["cpu_s"] - before.get(pid, {"cpu_s": 0.0})["cpu_s"]
        memory[now["group"]][now["role"]]["rss"] += now["rss"] / GIB
        memory[now["group"]][now["role"]]["pss"] += now["pss"] / GIB
    return {"startup_s": startup_s, "cpu_s": cpu, "memory_gib": memory}


def render_report(results: dict) -> str:
    lines = report_header(
        "Idle cost per region: Serve's high-throughput mode vs its default mode",
        results["command"],
        datetime.fromisoformat(results["started"]),
        results["machine"],
        1,
    )
    idle_s = results["idle_seconds"]
    lines[-1] = (
        f"- one run per mode, in this order: {', '.join(label for _, label, _ in MODES)}; spec `{results['spec']}` "
        f"with only `ray.high_throughput` changed; {results['settle_seconds']:g} s of rest after ready, then "
        f"{idle_s:g} s measured with no traffic"
    )
    lines += [
        "",
        "CPU is the share of one core over the idle window; memory is read at its end. RSS counts shared pages "
        "in every process, PSS splits them between their users.",
        "",
        "## Per region and for the platform",
        "",
        "| group | mode | idle CPU, % of a core | RSS GiB | PSS GiB |",
        "|---|---|---|---|---|",
    ]
    groups = sorted({group for run in results["modes"].values() for group in run["cpu_s"]})
    for group in groups:
        for key, label, _ in MODES:
            run = results["modes"][key]
            cpu = sum(run["cpu_s"].get(group, {}).values())
            memory = run["memory_gib"].get(group, {}).values()
            lines.append(
                f"| {group} | {label} | {100 * cpu / idle_s:.1f} | {sum(m['rss'] for m in memory):.2f} | "
                f"{sum(m['pss'] for m in memory):.2f} |"
            )
    for group in groups:
        header = " | ".join(f"{label}: CPU % / PSS GiB" for _, label, _ in MODES)
        lines += ["", f"## {group}, by role", "", f"| role | {header} |", "|---|" + "---|" * len(MODES)]
        roles = sorted({role for run in results["modes"].values() for role in run["memory_gib"].get(group, {})})
        for role in roles:
            cells = []
            for key, _, _ in MODES:
                run = results["modes"][key]
                cpu = run["cpu_s"].get(group, {}).get(role)
                memory = run["memory_gib"].get(group, {}).get(role)
                cells.append("—" if memory is None else f"{100 * (cpu or 0.0) / idle_s:.1f} / {memory['pss']:.2f}")
            lines.append(f"| {role} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Startup (`meridian up` until every region is ready): "
        + ", ".join(f"{label} {results['modes'][key]['startup_s']:.0f} s" for key, label, _ in MODES)
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO / "configs" / "local.yaml")
    parser.add_argument("--settle-seconds", type=float, default=30.0)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()
    started = datetime.now(UTC)
    results = {
        "command": command_line(),
        "started": started.isoformat(),
        "machine": machine(),
        "spec": str(args.spec),
        "settle_seconds": args.settle_seconds,
        "idle_seconds": args.idle_seconds,
        "modes": {},
    }
    for key, label, high_throughput in MODES:
        print(f"{label}: up, idle, down", flush=True)
        results["modes"][key] = idle_cost(args.spec, high_throughput, args.settle_seconds, args.idle_seconds)
    publish("idle_cost", results, render_report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
