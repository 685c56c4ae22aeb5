"""One report of the platform: for each region, its cluster, the nodes its capacity loop
holds, its Serve app, and the router's view of it (health, load, the autoscaler's target
and the global loop's floor, each with its reason)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from capacity.live.ledger import Ledger
from meridian import launcher
from meridian_core.spec import PlatformSpec
from meridian_host.platform_state import PlatformState


def collect_status(spec: PlatformSpec, state: PlatformState | None) -> dict[str, Any]:
    running = launcher.is_up(state)
    routed = launcher.router_regions(state) if running and state else {}
    regions = []
    for region in spec.regions:
        cluster = state.clusters.get(region.name) if state else None
        applications = launcher.serve_applications(state, cluster) if running and state and cluster else {}
        apps = launcher.region_apps(spec, region, applications)
        # Replica states are the model apps' engines'; the control app is plumbing.
        replica_states: dict[str, int] = {}
        for name, app in apps.items():
            if name == region.slug:
                continue
            for deployment in launcher.engine_deployments(app):
                for replica in deployment.get("replicas") or []:
                    replica_states[replica["state"]] = replica_states.get(replica["state"], 0) + 1
        snapshot = Ledger(state.cluster_dir(region.slug)).snapshot() if state else None
        nodes = Counter(f"{n.placement.cloud} {n.placement.market}" for n in snapshot.nodes) if snapshot else Counter()
        view = routed.get(region.name)
        status = view.status if view else None
        regions.append(
            {
                "name": region.name,
                "cluster": cluster.gcs_address if cluster else None,
                # Why `up` had to leave the region out; None when it runs.
                "left_out": state.failed_regions.get(region.name) if state else None,
                "managed": region.cluster.managed,
                "nodes": dict(sorted(nodes.items())),
                "healthy": bool(view and view.healthy),
                "last_error": view.last_error if view else None,
                "app_status": launcher.region_app_status(apps)[0] if applications else "NOT_RUNNING",
                "replica_states": replica_states,
                "ready_replicas": view.ready_replicas if view else 0,
                "engine": status.engine.model_dump() if status else {},
                # The autoscaler's last target and why; None for a fixed replica count.
                "autoscaling": status.autoscaling.model_dump() if status and status.autoscaling else None,
                # The global loop's floor and why, and what the capacity loop could not place.
                "floor": status.floor.model_dump() if status and status.floor else None,
                "capacity": status.capacity.model_dump() if status and status.capacity else None,
                "in_flight": view.in_flight if view else 0,
            }
        )
    return {
        "platform": spec.name,
        "running": running,
        "router_url": state.router_url if state else None,
        "regions": regions,
    }
