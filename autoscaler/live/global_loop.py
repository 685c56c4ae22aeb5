"""The global loop: replica floors across the regions' clusters.

Each region is its own Ray cluster, so the loop that needs the whole fleet in view talks
to them the way the router does: over HTTP, in the contracts of meridian_core/contracts.py.
Every few seconds it reads each region's `GET /status` (its policy's `ScalingView` and
its capacity loop's `CapacityReport`), computes the floors (autoscaler/policy/fleet_floors.py:
what a region cannot place goes to the nearest acceptable regions with room, and the
fleet keeps its warm minimum), and sends each autoscaled region its floor with
`PUT /fleet-floor`, or lifts it with `DELETE`, authenticated by the region's control
token (in the environment variable the region's `token_env` names). A region that does
not answer, or answers outside its contract, is left out of that tick; it never stops
the loop.

Acceptable regions are those the spec's `capacity.fallback` names (all other regions
when it names none), nearest first. Run as `python -m autoscaler.live.global_loop SPEC`;
the launcher starts it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Mapping

import httpx

from autoscaler.live.heartbeat import Heartbeat, serve_health
from autoscaler.policy.fleet_floors import RegionView, fleet_floors
from meridian_core.contracts import FleetFloor, MalformedMessage, RegionStatus, parse
from meridian_core.geo import haversine_km
from meridian_core.spec import PlatformSpec, RegionSpec, load_spec

log = logging.getLogger("meridian.global_loop")
INTERVAL_S = 5.0
TIMEOUT_S = 3.0
# Beyond the longest a tick can take, before /healthz calls the loop stuck.
STALE_MARGIN_S = 30.0


def fallback_order(spec: PlatformSpec) -> dict[str, list[str]]:
    """For each region, where its unplaced demand may go: acceptable regions, nearest first."""
    targets = spec.capacity.fallback

    def acceptable(region: RegionSpec) -> bool:
        cloud, place = region.name.split("/", 1)
        return not targets or any(t.cloud == cloud and t.region in (None, place) for t in targets)

    def distance(a: RegionSpec, b: RegionSpec) -> float:
        return haversine_km(a.location.latlon, b.location.latlon)

    return {
        region.name: [
            other.name
            for other in sorted(spec.regions, key=lambda other: distance(region, other))
            if other.name != region.name and acceptable(other)
        ]
        for region in spec.regions
    }


def floors_from(spec: PlatformSpec, statuses: Mapping[str, RegionStatus]) -> dict[str, FleetFloor]:
    """Floors for the autoscaled regions that answered, from what every region reported."""
    views = []
    for region in spec.regions:
        status = statuses.get(region.name)
        if region.autoscaling is not None and status is not None and status.autoscaling is not None:
            scaling = status.autoscaling
            # The policy's own target: a floor this loop set must not feed the next one.
            views.append(RegionView(region.name, scaling.own_target, scaling.max_replicas, scaling.recent_requests))
    shortfalls = {
        name: status.capacity.unplaced_replicas
        for name, status in statuses.items()
        if status.capacity is not None and status.capacity.unplaced_replicas > 0
    }
    return fleet_floors(views, shortfalls, fallback_order(spec), spec.fleet.min_warm_replicas)


class GlobalLoop:
    def __init__(self, spec: PlatformSpec, tokens: Mapping[str, str], client: httpx.Client):
        self.spec = spec
        self.tokens = tokens
        self.client = client

    def tick(self) -> dict[str, FleetFloor]:
        statuses = {}
        for region in self.spec.regions:
            status = self._status(region)
            if status is not None:
                statuses[region.name] = status
        floors = floors_from(self.spec, statuses)
        for region in self.spec.regions:
            if region.autoscaling is not None and region.name in statuses:
                self._send(region, floors.get(region.name))
        return floors

    def _status(self, region: RegionSpec) -> RegionStatus | None:
        try:
            url = f"{self.spec.region_endpoint(region)}/status"
            response = self.client.get(url, headers=self._auth(region), timeout=TIMEOUT_S)
            response.raise_for_status()
            return parse(RegionStatus, response.content)  # refuses a body over the size cap too
        except MalformedMessage as error:
            log.warning("%s: %s", region.name, error)
        except httpx.HTTPError as error:
            log.warning("%s did not answer its status: %s", region.name, type(error).__name__)
        return None

    def _auth(self, region: RegionSpec) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.get(region.name, '')}"}

    def _send(self, region: RegionSpec, floor: FleetFloor | None) -> None:
        url = f"{self.spec.region_endpoint(region)}/fleet-floor"
        headers = self._auth(region)
        try:
            if floor is None:
                response = self.client.delete(url, headers=headers, timeout=TIMEOUT_S)
            else:
                response = self.client.put(url, content=floor.model_dump_json(), headers=headers, timeout=TIMEOUT_S)
            response.raise_for_status()
        except httpx.HTTPError as error:
            log.warning("%s did not take its floor: %s", region.name, type(error).__name__)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="global_loop", description="Meridian's replica floors across regions")
    parser.add_argument("spec", help="platform spec (YAML)")
    parser.add_argument("--health-port", type=int, help="answer GET /healthz on this port (Kubernetes' probes)")
    args = parser.parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    spec = load_spec(args.spec)
    tokens = {region.name: os.environ.get(region.token_env, "") for region in spec.regions}
    for region in spec.regions:
        if not tokens[region.name]:
            log.warning("%s: no control token in %s; it will refuse its floor", region.name, region.token_env)
    loop = GlobalLoop(spec, tokens, httpx.Client())
    # A tick asks every region at most twice, each within TIMEOUT_S.
    heartbeat = Heartbeat(stale_after_s=INTERVAL_S + 2 * TIMEOUT_S * len(spec.regions) + STALE_MARGIN_S)
    if args.health_port is not None:
        serve_health(heartbeat, "0.0.0.0", args.health_port)
    while True:
        try:
            floors = loop.tick()
            if floors:
                log.info("floors: %s", {name: floor.replicas for name, floor in floors.items()})
        except Exception:  # one bad tick must not end the loop that keeps the fleet warm
            log.exception("global tick failed")
        heartbeat.beat()
        time.sleep(INTERVAL_S)


if __name__ == "__main__":
    main(sys.argv)
