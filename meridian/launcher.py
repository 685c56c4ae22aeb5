"""The local launcher: a Ray head, one labelled Ray node per region, the region apps
(deployed with `serve deploy`), and the geo router, all as real processes.

`up` is safe to repeat: if the platform is already running it re-applies the Serve
config (a no-op when unchanged) and waits for readiness again. `down` stops every
process `up` started and sweeps up anything they spawned.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from capacity.live.local import LocalProvider, placement_for
from meridian.serve_config import serve_config
from meridian_core.contracts import MalformedMessage, RouterRegion, RouterRegions, parse
from meridian_core.spec import PlatformSpec, load_spec
from meridian_host import models, processes
from meridian_host.platform_state import PlatformState
from meridian_host.ray_nodes import BIN, start_ray_node

# Processes beside the engines (Serve controller/proxy, ingress, router) need CPU
# too; Ray only schedules by logical CPUs, so the head advertises one.
log = logging.getLogger("meridian.launcher")
HEAD_CPUS = 1


class LaunchError(RuntimeError):
    pass


@dataclass
class RegionProgress:
    name: str
    phase: str  # starting | deploying | ready | failed
    detail: str = ""


ProgressCallback = Callable[[str], None]
RegionsCallback = Callable[[list[RegionProgress]], None]


def ray_temp_dir(spec: PlatformSpec) -> str:
    # Ray puts unix sockets under this directory; it must stay short (AF_UNIX paths
    # are limited to 107 bytes), so it does not live under the state dir.
    return f"/tmp/meridian-{spec.name}"


def new_state(spec: PlatformSpec, spec_path: Path) -> PlatformState:
    return PlatformState(
        name=spec.name,
        spec_path=str(spec_path.resolve()),
        platform_id=uuid.uuid4().hex,
        ray_temp_dir=ray_temp_dir(spec),
        gcs_address=f"127.0.0.1:{spec.ray.gcs_port}",
        dashboard_url=f"http://127.0.0.1:{spec.ray.dashboard_port}",
        router_url=f"http://{spec.router.host}:{spec.router.port}",
    )


def is_up(state: PlatformState | None) -> bool:
    return (
        state is not None
        and processes.is_running(state.head_pid)
        and processes.is_running(state.router_pid)
        and processes.is_running(state.capacity_pid)
        and all(processes.is_running(node["pid"]) for node in state.local_nodes.values())
    )


def up(
    spec_path: Path,
    *,
    on_step: ProgressCallback = lambda _: None,
    on_regions: RegionsCallback = lambda _: None,
    timeout_s: float = 900.0,
) -> tuple[PlatformState, bool]:
    """Bring the platform up; return its state and whether it was already running."""
    spec = load_spec(spec_path)
    for model in spec.models:
        if not models.is_pulled(model.source):
            on_step(f"pulling model {model.id}")
        models.pull(model.source, progress=on_step)

    state = PlatformState.load(spec.name)
    already_up = is_up(state)
    if state is not None and not already_up:
        on_step("cleaning up a platform that is partly down")
        down(spec.name)
        state = None
    if state is None:
        state = new_state(spec, spec_path)
        state.save()
        try:
            start_ray(spec, state, on_step)
            deploy(spec, state, on_step)
            start_router(spec, state, on_step)
            start_capacity_loop(state, on_step)
        except BaseException:
            down(spec.name)
            raise
    else:
        on_step("platform already running; re-applying the Serve config")
        deploy(spec, state, on_step)
    wait_ready(spec, state, on_regions, timeout_s)
    return state, already_up


def start_ray(spec: PlatformSpec, state: PlatformState, on_step: ProgressCallback) -> None:
    on_step("starting the Ray head")
    state.head_pid = start_ray_node(
        spec,
        state,
        node_index=0,
        log_name="ray-head",
        role_args=[
            "--head",
            "--port",
            str(spec.ray.gcs_port),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(spec.ray.dashboard_port),
            "--ray-client-server-port",
            str(spec.ray.gcs_port + 1),
            "--num-cpus",
            str(HEAD_CPUS),
            "--temp-dir",
            state.ray_temp_dir,
        ],  # fmt: skip
    )
    state.save()
    wait_for(
        lambda: _answers(f"{state.dashboard_url}/api/version"),
        120,
        "the Ray dashboard",
        state.logs_dir / "ray-head.log",
    )
    # One node at a time: Ray nodes starting together on one machine race for ports.
    provider = LocalProvider(spec, state)
    for region in spec.regions:
        on_step(f"starting the Ray node of {region.name}")
        provider.acquire(placement_for(spec, region))


def deploy(spec: PlatformSpec, state: PlatformState, on_step: ProgressCallback) -> None:
    on_step("deploying the region apps (serve deploy)")
    config_path = state.directory / "serve.yaml"
    config_path.write_text(yaml.safe_dump(serve_config(spec), sort_keys=False))
    result = subprocess.run(
        [str(BIN / "serve"), "deploy", str(config_path), "--address", state.dashboard_url],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise LaunchError(f"serve deploy failed:\n{result.stdout}\n{result.stderr}".strip())


def start_router(spec: PlatformSpec, state: PlatformState, on_step: ProgressCallback) -> None:
    on_step(f"starting the geo router on {state.router_url}")
    state.router_pid = processes.spawn(
        [sys.executable, "-m", "geo_router", state.spec_path],
        state.logs_dir / "router.log",
        state.platform_id,
    )
    state.save()
    wait_for(lambda: _answers(f"{state.router_url}/healthz"), 60, "the router to answer", state.logs_dir / "router.log")


def start_capacity_loop(state: PlatformState, on_step: ProgressCallback) -> None:
    """The loop that adds and removes region nodes as replica targets change."""
    on_step("starting the capacity loop")
    state.capacity_pid = processes.spawn(
        [sys.executable, "-m", "capacity.live.capacity_loop", state.spec_path],
        state.logs_dir / "capacity.log",
        state.platform_id,
    )
    state.save()


def wait_ready(spec: PlatformSpec, state: PlatformState, on_regions: RegionsCallback, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        progress = region_progress(spec, state)
        on_regions(progress)
        failed = [p for p in progress if p.phase == "failed"]
        if failed:
            raise LaunchError("; ".join(f"{p.name}: {p.detail}" for p in failed))
        if all(p.phase == "ready" for p in progress):
            return
        if time.monotonic() > deadline:
            raise LaunchError(f"regions not ready after {timeout_s:.0f} s: {progress}")
        if not is_up(state):
            raise LaunchError(f"a platform process exited; see the logs in {state.logs_dir}")
        time.sleep(1.0)


def region_progress(spec: PlatformSpec, state: PlatformState) -> list[RegionProgress]:
    apps = serve_applications(state)
    routed = router_regions(state)
    progress = []
    for region in spec.regions:
        app = apps.get(region.slug, {})
        app_status = app.get("status", "NOT_STARTED")
        view = routed.get(region.name)
        if app_status == "DEPLOY_FAILED":
            progress.append(RegionProgress(region.name, "failed", app.get("message", "")[-2000:]))
        elif view is not None and view.healthy and view.ready_replicas >= _replicas_to_wait_for(view):
            progress.append(RegionProgress(region.name, "ready", f"{view.ready_replicas} replica(s) ready"))
        else:
            progress.append(RegionProgress(region.name, "deploying", app_status.lower().replace("_", " ")))
    return progress


def _replicas_to_wait_for(view: RouterRegion) -> int:
    """A region is up with one ready replica, or none if it may scale to zero."""
    scaling = view.status.autoscaling if view.status else None
    return 0 if scaling is not None and scaling.min_replicas == 0 else 1


def serve_applications(state: PlatformState) -> dict[str, Any]:
    try:
        response = httpx.get(f"{state.dashboard_url}/api/serve/applications/", timeout=5)
        response.raise_for_status()
        return response.json().get("applications", {})
    except (httpx.HTTPError, ValueError):
        return {}


def router_regions(state: PlatformState) -> dict[str, RouterRegion]:
    """The router's view of each region by name; empty when the router cannot say."""
    try:
        response = httpx.get(f"{state.router_url}/regions", timeout=2)
        response.raise_for_status()
        return {r.name: r for r in parse(RouterRegions, response.content).regions}
    except httpx.HTTPError:
        return {}
    except MalformedMessage as error:
        log.warning("%s", error)
        return {}


def down(name: str) -> int:
    """Stop the platform `name`; return how many stray processes the final sweep found."""
    state = PlatformState.load(name)
    if state is None:
        return 0
    # The capacity loop first, so it starts no node while the others stop.
    pids = [state.capacity_pid, state.router_pid, *(n["pid"] for n in state.local_nodes.values()), state.head_pid]
    for pid in pids:
        if pid:
            processes.terminate_group(pid)
    leftovers = processes.sweep(state.platform_id)
    state.forget()
    return leftovers


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else "(no log)"
            raise LaunchError(f"timed out after {timeout_s:.0f} s waiting for {what}; {log_path}:\n{tail}")
        time.sleep(0.5)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False
