"""The launcher: for each region its own Ray cluster (a local head for a managed one),
its Serve app (deployed with `serve deploy` to that cluster) and its capacity loop;
then the geo router and the global loop above the clusters. All are real processes.

`up` is safe to repeat: if the platform is already running it re-applies each region's
Serve config (a no-op when unchanged) and waits for readiness again. If a loop or the
router stopped while every cluster still runs, it restarts just those: a capacity loop
re-adopts its region's nodes from their records (local) or their ownership tags
(clouds) and re-reads its ledger, so no node is lost. `down` stops every process `up`
started and sweeps up anything they spawned.
"""

from __future__ import annotations

import logging
import os
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
from capacity.live.providers import provider_for
from capacity.model import ProviderError
from meridian.serve_config import serve_config
from meridian_core.contracts import MalformedMessage, RouterRegion, RouterRegions, parse
from meridian_core.spec import REPLICA_ROUTER_DEPLOYMENT, PlatformSpec, RegionSpec, load_spec, model_app_name
from meridian_host import models, processes
from meridian_host.platform_state import ClusterState, LocalNodes, PlatformState
from meridian_host.ray_nodes import BIN, start_head
from meridian_host.region_tokens import (
    dashboard_headers,
    ray_auth_env,
    region_token,
    router_admin_token,
    token_sha256,
)

log = logging.getLogger("meridian.launcher")
# `serve deploy` only submits the config (the app is built afterwards); a minute is ample.
DEPLOY_TIMEOUT_S = 120.0


class LaunchError(RuntimeError):
    pass


@dataclass
class RegionProgress:
    name: str
    phase: str  # starting | deploying | ready | failed | left out
    detail: str = ""


ProgressCallback = Callable[[str], None]
RegionsCallback = Callable[[list[RegionProgress]], None]


def new_state(spec: PlatformSpec, spec_path: Path) -> PlatformState:
    return PlatformState(
        name=spec.name,
        spec_path=str(spec_path.resolve()),
        platform_id=uuid.uuid4().hex,
        router_url=f"http://{spec.router.host}:{spec.router.port}",
    )


def is_up(state: PlatformState | None) -> bool:
    if state is None or not state.clusters:
        return False
    pids = [state.router_pid, state.global_loop_pid]
    for cluster in state.clusters.values():
        pids.append(cluster.capacity_pid)
        if cluster.ray_temp_dir is not None:  # a cluster Meridian started
            pids.append(cluster.head_pid)
    return all(processes.is_running(pid) for pid in pids)


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
    if state is not None and not already_up and clusters_alive(state):
        restart_stopped(spec, state, on_step)
    elif state is not None and not already_up:
        on_step("cleaning up a platform that is partly down")
        down(spec.name)
        state = None
    if state is None:
        state = new_state(spec, spec_path)
        state.save()
        try:
            start_regions(spec, state, spec.regions, on_step)
            start_router(spec, state, on_step)
            start_global_loop(spec, state, on_step)
        except BaseException:
            down(spec.name)
            raise
    else:
        on_step("platform already running; re-applying the Serve configs")
        for region in running_regions(spec, state):
            deploy(spec, state, region, on_step)
        left_out = [region for region in spec.regions if region.name in state.failed_regions]
        if left_out:
            on_step("trying again the regions left out")
            start_regions(spec, state, left_out, on_step)
    wait_ready(spec, state, on_regions, timeout_s)
    return state, already_up


def start_regions(
    spec: PlatformSpec, state: PlatformState, regions: list[RegionSpec], on_step: ProgressCallback
) -> None:
    """Each region's cluster, Serve app and capacity loop. A region that fails is named
    and left out (its cluster, if started, stopped), unless the spec is all-or-nothing
    or no region is left. The router and the global loop know every region of the spec,
    so one that comes up later is routed to as soon as it answers."""
    for region in regions:
        state.failed_regions.pop(region.name, None)
        try:
            start_cluster(spec, state, region, on_step)
            deploy(spec, state, region, on_step)
            start_capacity_loop(state, region, on_step)
        except LaunchError as error:
            if spec.all_or_nothing:
                raise
            on_step(f"left out: {error}")  # the error names the region
            stop_cluster(state, region)
            state.failed_regions[region.name] = str(error)[:2000]
            state.save()
    if not state.clusters:
        raise LaunchError("no region came up: " + "; ".join(state.failed_regions.values()))


def running_regions(spec: PlatformSpec, state: PlatformState) -> list[RegionSpec]:
    """The spec's regions `up` started (all but those it had to leave out)."""
    return [region for region in spec.regions if region.name in state.clusters]


def stop_cluster(state: PlatformState, region: RegionSpec) -> None:
    """Stop what `up` started for one region and forget its cluster."""
    cluster = state.clusters.pop(region.name, None)
    if cluster is None:
        return
    node_pids = live_local_node_pids(state, cluster)
    for pid in [cluster.capacity_pid, *node_pids, cluster.head_pid if cluster.ray_temp_dir else 0]:
        if pid:
            processes.terminate_group(pid)
    LocalNodes.forget(state, cluster.slug)


def live_local_node_pids(state: PlatformState, cluster: ClusterState) -> list[int]:
    """The `ray start` pids of the cluster's local nodes that still run: a record whose
    process is gone may name a pid the kernel has since given to another process."""
    nodes = LocalNodes.load(state, cluster.slug).nodes.values()
    return [node.pid for node in nodes if processes.is_running_since(node.pid, node.launched_at_s)]


def clusters_alive(state: PlatformState) -> bool:
    """Every region has its cluster, and every head Meridian started still runs."""
    return bool(state.clusters) and all(
        processes.is_running(c.head_pid) for c in state.clusters.values() if c.ray_temp_dir is not None
    )


def restart_stopped(spec: PlatformSpec, state: PlatformState, on_step: ProgressCallback) -> None:
    """Start again the loops and the router that stopped, and nothing else."""
    for region in running_regions(spec, state):
        if not processes.is_running(state.clusters[region.name].capacity_pid):
            on_step(f"{region.name}: its capacity loop had stopped")
            start_capacity_loop(state, region, on_step)
    if not processes.is_running(state.router_pid):
        start_router(spec, state, on_step)
    if not processes.is_running(state.global_loop_pid):
        start_global_loop(spec, state, on_step)


def start_cluster(spec: PlatformSpec, state: PlatformState, region: RegionSpec, on_step: ProgressCallback) -> None:
    """The region's Ray cluster: a head started here for a managed one, the given address
    for an existing one; then, for a local region, its first node."""
    if region.cluster.managed:
        on_step(f"{region.name}: starting its Ray cluster")
        cluster = start_head(spec, state, region)
        state.clusters[region.name] = cluster
        state.save()
        log_path = state.logs_dir / f"ray-head-{region.slug}.log"
        wait_for(lambda: _answers(f"{cluster.dashboard_url}/api/version"), 120, f"{region.name}'s Ray head", log_path)
    else:
        assert region.cluster.address and region.cluster.dashboard_url  # the spec checks both are set
        state.clusters[region.name] = ClusterState(
            slug=region.slug, gcs_address=region.cluster.address, dashboard_url=region.cluster.dashboard_url
        )
        state.save()
        if not _answers(f"{region.cluster.dashboard_url}/api/version"):
            raise LaunchError(f"{region.name}: its cluster does not answer at {region.cluster.dashboard_url}")
    if region.capacity.provider == "local":
        # Node records left by an earlier run that was never brought down belong to no
        # node of this cluster; kept, they would count as its capacity.
        LocalNodes.forget(state, region.slug)
        # The capacity loop would buy it within a tick; starting it here lets the
        # Serve app deploy onto a node at once.
        on_step(f"{region.name}: starting its first Ray node")
        LocalProvider(spec, state, region).acquire(placement_for(spec, region))


def deploy(spec: PlatformSpec, state: PlatformState, region: RegionSpec, on_step: ProgressCallback) -> None:
    on_step(f"{region.name}: deploying its Serve app")
    token = region_token(state, region) if region.cluster.managed else os.environ.get(region.token_env)
    digest = token_sha256(token) if token else None
    config_path = state.cluster_dir(region.slug) / "serve.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(serve_config(spec, region, digest), sort_keys=False))
    cluster = state.clusters[region.name]
    try:
        result = subprocess.run(
            [str(BIN / "serve"), "deploy", str(config_path), "--address", cluster.dashboard_url],
            capture_output=True,
            text=True,
            env={**os.environ, **ray_auth_env(state, cluster)},
            timeout=DEPLOY_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{region.name}: serve deploy did not finish in {DEPLOY_TIMEOUT_S:.0f} s") from None
    if result.returncode != 0:
        raise LaunchError(f"{region.name}: serve deploy failed:\n{result.stdout}\n{result.stderr}".strip())


def start_capacity_loop(state: PlatformState, region: RegionSpec, on_step: ProgressCallback) -> None:
    """The loop that adds and removes the region's nodes as its replica target changes."""
    on_step(f"{region.name}: starting its capacity loop")
    cluster = state.clusters[region.name]
    cluster.capacity_pid = processes.spawn(
        [sys.executable, "-m", "capacity.live.capacity_loop", state.spec_path, region.name],
        state.logs_dir / f"capacity-{region.slug}.log",
        state.platform_id,
        env=ray_auth_env(state, cluster),
    )
    state.save()


def region_tokens(spec: PlatformSpec, state: PlatformState) -> dict[str, str]:
    """Each managed region's token under the variable its spec names, for the processes
    that reach the regions (the router and the global loop). An existing cluster's token
    is the user's, already in the environment they inherit."""
    return {region.token_env: region_token(state, region) for region in spec.regions if region.cluster.managed}


def start_router(spec: PlatformSpec, state: PlatformState, on_step: ProgressCallback) -> None:
    on_step(f"starting the geo router on {state.router_url}")
    state.router_pid = processes.spawn(
        [sys.executable, "-m", "geo_router", state.spec_path],
        state.logs_dir / "router.log",
        state.platform_id,
        env=region_tokens(spec, state) | {spec.router.auth.admin_token_env: router_admin_token(state)},
    )
    state.save()
    wait_for(lambda: _answers(f"{state.router_url}/healthz"), 60, "the router to answer", state.logs_dir / "router.log")


def start_global_loop(spec: PlatformSpec, state: PlatformState, on_step: ProgressCallback) -> None:
    """The loop above the clusters, with the regions' tokens (`region_tokens`)."""
    on_step("starting the global loop")
    state.global_loop_pid = processes.spawn(
        [sys.executable, "-m", "autoscaler.live.global_loop", state.spec_path],
        state.logs_dir / "global-loop.log",
        state.platform_id,
        env=region_tokens(spec, state),
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
        if all(p.phase in ("ready", "left out") for p in progress):
            return
        if time.monotonic() > deadline:
            raise LaunchError(f"regions not ready after {timeout_s:.0f} s: {progress}")
        if not is_up(state):
            raise LaunchError(f"a platform process exited; see the logs in {state.logs_dir}")
        time.sleep(1.0)


def region_progress(spec: PlatformSpec, state: PlatformState) -> list[RegionProgress]:
    routed = router_regions(state)
    progress = [RegionProgress(name, "left out", reason) for name, reason in state.failed_regions.items()]
    for region in running_regions(spec, state):
        cluster = state.clusters.get(region.name)
        apps = region_apps(spec, region, serve_applications(state, cluster) if cluster else {})
        app_status, message = region_app_status(apps)
        view = routed.get(region.name)
        if app_status == "DEPLOY_FAILED":
            progress.append(RegionProgress(region.name, "failed", message[-2000:]))
        elif view is not None and view.healthy and view.ready_replicas >= _replicas_to_wait_for(view):
            progress.append(RegionProgress(region.name, "ready", f"{view.ready_replicas} replica(s) ready"))
        else:
            progress.append(RegionProgress(region.name, "deploying", app_status.lower().replace("_", " ")))
    return progress


def _replicas_to_wait_for(view: RouterRegion) -> int:
    """A region is up with a ready replica for each model it serves (each model is its
    own deployment), or none if it may scale to zero."""
    scaling = view.status.autoscaling if view.status else None
    return 0 if scaling is not None and scaling.min_replicas == 0 else max(1, len(view.models))


def region_apps(spec: PlatformSpec, region: RegionSpec, applications: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The region's Serve apps by name, as its cluster's dashboard reports them (empty if it
    does not): its control app, then each model's."""
    names = [region.slug, *(model_app_name(region.slug, model.id) for model in spec.models)]
    return {name: applications.get(name, {}) for name in names}


def region_app_status(apps: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """One Serve status for the region's apps, and its message: a failed app's, else an
    unhealthy one's, else the first not yet running, else RUNNING."""
    statuses = [(app.get("status", "NOT_STARTED"), app.get("message", "")) for app in apps.values()]
    for wanted in ("DEPLOY_FAILED", "UNHEALTHY"):
        for status, message in statuses:
            if status == wanted:
                return status, message
    return next(((s, m) for s, m in statuses if s != "RUNNING"), ("RUNNING", ""))


def engine_deployments(app: dict[str, Any]) -> list[dict[str, Any]]:
    """A model app's deployments that run its model, without its replica router."""
    return [d for name, d in app.get("deployments", {}).items() if name != REPLICA_ROUTER_DEPLOYMENT]


def serve_applications(state: PlatformState, cluster: ClusterState) -> dict[str, Any]:
    """The Serve applications of one cluster, as its dashboard reports them."""
    try:
        url = f"{cluster.dashboard_url}/api/serve/applications/"
        response = httpx.get(url, headers=dashboard_headers(state, cluster), timeout=5)
        response.raise_for_status()
        return response.json().get("applications", {})
    except (httpx.HTTPError, ValueError):
        return {}


def router_regions(state: PlatformState) -> dict[str, RouterRegion]:
    """The router's view of each region by name; empty when the router cannot say."""
    try:
        admin = {"Authorization": f"Bearer {router_admin_token(state)}"}
        response = httpx.get(f"{state.router_url}/regions", headers=admin, timeout=2)
        response.raise_for_status()
        return {r.name: r for r in parse(RouterRegions, response.content).regions}
    except httpx.HTTPError:
        return {}
    except MalformedMessage as error:
        log.warning("%s", error)
        return {}


@dataclass
class Stopped:
    strays: int  # processes the final sweep found still carrying the platform's id
    problems: list[str]  # cloud instances that could not be released, one line a region


def down(name: str) -> Stopped:
    """Stop the platform `name`: its loops, router, nodes and heads, and every cloud
    instance its regions' providers own."""
    state = PlatformState.load(name)
    if state is None:
        return Stopped(0, [])
    # The capacity loops first, so they start no node while the others stop.
    clusters = state.clusters.values()
    for pid in [cluster.capacity_pid for cluster in clusters]:
        if pid:
            processes.terminate_group(pid)
    problems = release_cloud_nodes(load_spec(state.spec_path), state)
    pids = [state.global_loop_pid, state.router_pid]
    pids += [pid for cluster in clusters for pid in live_local_node_pids(state, cluster)]
    pids += [cluster.head_pid for cluster in clusters]
    for pid in pids:
        if pid:
            processes.terminate_group(pid)
    strays = processes.sweep(state.platform_id)
    # A node record kept past its node holds its port block: the next `up` would find
    # none free on a region with no spare blocks.
    for cluster in clusters:
        LocalNodes.forget(state, cluster.slug)
    state.forget()
    return Stopped(strays, problems)


def release_cloud_nodes(spec: PlatformSpec, state: PlatformState) -> list[str]:
    """Terminate every instance a cloud region's provider finds as its own (by its
    ownership tags or labels, nothing else); a region that cannot is named, with why."""
    problems = []
    for region in spec.regions:
        if region.capacity.provider == "local" or region.name not in state.clusters:
            continue
        try:
            provider, _ = provider_for(spec, region, state)
            for node in provider.nodes():
                provider.release(node.id)
        except ProviderError as error:  # names the region and the call, nothing else
            problems.append(f"{region.name}: its instances were not all released ({error})")
        except Exception as error:  # each region is tried, whatever the others do; no endpoint in the message
            problems.append(f"{region.name}: its instances were not all released ({type(error).__name__})")
    return problems


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
