"""The live capacity loop: nodes for the replicas the autoscaler wants, and the
autoscaler's global loop.

Every few seconds it reads each region's replica target (the autoscaler's decision,
from Ray's KV where the region's policy publishes it; a fixed region's `replicas`), turns it into
node demand, asks the placement policy (capacity/policy/placement.py, the simulator's code)
what to buy and release, and carries that out through the provider, writing every
event and the held nodes to the ledger that `meridian capacity report` reads.

A region's replicas run only on its own nodes, so a node bought in another region
cannot carry them. Demand that placement falls back to another region with is not
bought there: it becomes a replica floor for that region, whose own policy then sizes
it and whose own placement buys its nodes. That, demand placement could place nowhere,
and the spec's fleet-wide warm minimum are the global loop
(autoscaler/policy/fleet_floors.py), published for the regions' policies.

Run beside a local platform as `python -m capacity.live.capacity_loop SPEC`; the launcher
starts it. Releases go through Ray's drain, which refuses a node still running
something, so a replica is never killed under its requests; another idle node of
the same region is released instead, or none this tick.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable

from autoscaler.live.published import drop_malformed, publish_floor, read_published
from autoscaler.policy.fleet_floors import RegionView, Spill, fleet_floors
from capacity.catalog import Catalog
from capacity.live.ledger import Ledger, Snapshot
from capacity.live.local import LocalProvider, local_catalog
from capacity.model import CapacityError, Node, NodeBusy, Provider
from capacity.policy.placement import Demand, PlacementDecision, plan
from meridian_core.contracts import FleetFloor, MalformedMessage, ScalingView
from meridian_core.geo import LatLon, haversine_km
from meridian_core.spec import PlatformSpec, RegionSpec, load_spec
from meridian_host.platform_state import PlatformState

log = logging.getLogger("meridian.capacity")
INTERVAL_S = 5.0


# ray.serve.llm adds the Serve replica actor's CPU to the engine's placement bundle,
# and a starting replica runs a model-download task that needs a CPU of the node's own.
REPLICA_ACTOR_CPUS = 1
NODE_TASK_CPUS = 1


def replicas_per_node(spec: PlatformSpec, region: RegionSpec) -> int:
    usable = spec.ray.cpus_per_region_node - NODE_TASK_CPUS
    return max(1, usable // (region.cpus_per_replica + REPLICA_ACTOR_CPUS))


def node_demand(spec: PlatformSpec, targets: dict[str, int]) -> list[Demand]:
    """Nodes each region needs for its target: the replicas that fit on one node, and
    never fewer than one, which keeps the region's ingress. A target is never taken past
    the spec's `max_replicas`, whatever was published."""
    demands = []
    for region in spec.regions:
        bound = region.autoscaling.max_replicas if region.autoscaling else region.replicas
        replicas = min(targets.get(region.name, region.replicas), bound)
        nodes = max(1, math.ceil(replicas / replicas_per_node(spec, region)))
        demands.append(Demand(region.cloud, region.slug, nodes, region.accelerator, 1))
    return demands


def published_scaling(spec: PlatformSpec) -> dict[str, ScalingView]:
    """Each autoscaled region's latest published decision, read from Ray's KV; a
    malformed one is logged, counted and left out, so that region keeps its fixed count."""
    views = {}
    for region in spec.regions:
        if region.autoscaling is None:
            continue
        try:
            view = read_published(region.slug)
        except MalformedMessage as error:
            drop_malformed(error, "capacity loop", log)
            continue
        if view is not None:
            views[region.name] = view
    return views


def floors_for(
    spec: PlatformSpec, scaling: dict[str, ScalingView], decision: PlacementDecision
) -> dict[str, FleetFloor]:
    """The global loop: floors for autoscaled regions from what placement moved to another
    region or could not place, and from the fleet's warm minimum. Demand placement could
    place nowhere goes to the other regions, nearest first."""
    autoscaled = [r for r in spec.regions if r.autoscaling is not None and r.name in scaling]
    views = [
        RegionView(r.name, scaling[r.name].own_target, r.autoscaling.max_replicas, scaling[r.name].recent_requests)
        for r in autoscaled
    ]
    by_home = {(r.cloud, r.slug): r for r in spec.regions}
    shortfalls: dict[str, int] = {}
    for shortfall in decision.shortfalls:
        region = by_home[shortfall.demand]
        shortfalls[region.name] = shortfalls.get(region.name, 0) + shortfall.nodes * replicas_per_node(spec, region)
    spills = []
    for fallback in decision.fallbacks:
        origin = by_home[fallback.demand]
        # Outside every Meridian region no replica could serve the traffic: the whole move is unplaced.
        target = by_home.get(fallback.to, origin)
        spills.append(Spill(origin.name, target.name, fallback.nodes * replicas_per_node(spec, target)))

    def nearest_first(region: RegionSpec) -> list[str]:
        here = LatLon(region.location.lat, region.location.lon)
        others = [r for r in autoscaled if r.name != region.name]
        return [
            r.name for r in sorted(others, key=lambda r: haversine_km(here, LatLon(r.location.lat, r.location.lon)))
        ]

    order = {r.name: nearest_first(r) for r in spec.regions}
    return fleet_floors(views, shortfalls, order, spec.fleet.min_warm_replicas, spills)


class CapacityLoop:
    def __init__(
        self,
        spec: PlatformSpec,
        provider: Provider,
        ledger: Ledger,
        catalog: Catalog,
        scaling: Callable[[], dict[str, ScalingView]],
        publish_floors: Callable[[dict[str, FleetFloor]], None],
        clock: Callable[[], float] = time.time,
    ):
        self.spec = spec
        self.provider = provider
        self.ledger = ledger
        self.catalog = catalog
        self.scaling = scaling
        self.publish_floors = publish_floors
        self.clock = clock

    def tick(self) -> PlacementDecision:
        now = self.clock()
        nodes = self.provider.nodes()
        self.ledger.record_events(self.provider.events())
        scaling = self.scaling()
        demands = node_demand(self.spec, {name: view.target for name, view in scaling.items()})
        recent = self.ledger.events(since_s=now - self.spec.capacity.event_memory_s)
        capacity = self.spec.capacity
        if self.provider.cloud == "local":  # no spot market, so no spot spare to stand in for either
            capacity = capacity.model_copy(update={"spot_enabled": False})
        decision = plan(demands, nodes, self.catalog, capacity, recent, now)
        for acquisition in decision.acquisitions:
            if acquisition.is_fallback:
                continue  # its region's floor buys it there (floors_for)
            log.info("acquire %s: %s", acquisition.placement, acquisition.reason)
            try:
                self.provider.acquire(acquisition.placement)
            except CapacityError as refusal:
                log.warning("acquisition refused: %s", refusal)
                self.ledger.record_events([refusal.event])
        released: set[str] = set()
        for release in decision.releases:
            self._release(release.node_id, nodes, released, release.reason)
        self.ledger.record_events(self.provider.events())
        self.publish_floors(floors_for(self.spec, scaling, decision))
        self.ledger.record_snapshot(Snapshot(now, tuple(self.provider.nodes()), {d.home: d.replicas for d in demands}))
        return decision

    def _release(self, node_id: str, nodes: list[Node], released: set[str], reason: str) -> None:
        """Release `node_id`, or, if Ray finds it busy, an idle node of the same kind."""
        proposed = next(n for n in nodes if n.id == node_id)
        alternatives = [n.id for n in nodes if n.placement == proposed.placement and n.id != node_id]
        for candidate in [node_id, *alternatives]:
            if candidate in released:
                continue
            try:
                self.provider.release(candidate)
            except NodeBusy as busy:
                log.info("not releasing %s now: %s", candidate, busy)
                continue
            log.info("released %s: %s", candidate, reason)
            released.add(candidate)
            return


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line a poll otherwise
    spec = load_spec(argv[1])
    state = PlatformState.load(spec.name)
    if state is None:
        raise SystemExit(f"platform {spec.name} is not running")
    import ray

    ray.init(address=state.gcs_address, logging_level=logging.WARNING, log_to_driver=False)
    autoscaled = [r for r in spec.regions if r.autoscaling is not None]

    def publish_floors(floors: dict[str, FleetFloor]) -> None:
        for region in autoscaled:
            publish_floor(region.slug, floors.get(region.name))

    loop = CapacityLoop(
        spec,
        LocalProvider(spec, state),
        Ledger(state.directory),
        local_catalog(spec),
        scaling=lambda: published_scaling(spec),
        publish_floors=publish_floors,
    )
    while True:
        try:
            loop.tick()
        except Exception:  # one bad tick must not end the loop that keeps regions supplied
            log.exception("capacity tick failed")
        time.sleep(INTERVAL_S)


if __name__ == "__main__":
    main(sys.argv)
