"""One report of the platform: router view of each region joined with Ray Serve's."""

from __future__ import annotations

from typing import Any

from meridian import launcher
from meridian_core.spec import PlatformSpec
from meridian_host.platform_state import PlatformState

# Replica states are reported for the engine deployments; the ingress is plumbing.
INGRESS_DEPLOYMENT = "RegionIngress"


def collect_status(spec: PlatformSpec, state: PlatformState | None) -> dict[str, Any]:
    running = launcher.is_up(state)
    apps = launcher.serve_applications(state) if running else {}
    routed = launcher.router_regions(state) if running else {}
    regions = []
    for region in spec.regions:
        app = apps.get(region.slug, {})
        replica_states: dict[str, int] = {}
        for name, deployment in app.get("deployments", {}).items():
            if name == INGRESS_DEPLOYMENT:
                continue
            for replica in deployment.get("replicas") or []:
                replica_states[replica["state"]] = replica_states.get(replica["state"], 0) + 1
        view = routed.get(region.name)
        status = view.status if view else None
        regions.append(
            {
                "name": region.name,
                "healthy": bool(view and view.healthy),
                "last_error": view.last_error if view else None,
                "app_status": app.get("status", "NOT_RUNNING"),
                "replica_states": replica_states,
                "ready_replicas": view.ready_replicas if view else 0,
                "engine": status.engine.model_dump() if status else {},
                # The autoscaler's last target and why; None for a fixed replica count.
                "autoscaling": status.autoscaling.model_dump() if status and status.autoscaling else None,
                "in_flight": view.in_flight if view else 0,
            }
        )
    return {
        "platform": spec.name,
        "running": running,
        "router_url": state.router_url if state else None,
        "dashboard_url": state.dashboard_url if state else None,
        "regions": regions,
    }
