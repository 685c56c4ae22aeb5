"""The live capacity loop: nodes for the replicas the autoscaler wants.

Every few seconds it reads each region's replica target (the autoscaler's published
decision, via the router's region view; a fixed region's `replicas`), turns it into
node demand, asks the placement policy (capacity/placement.py, the simulator's code)
what to buy and release, and carries that out through the provider, writing every
event and the held nodes to the ledger that `meridian capacity report` reads.

Run beside a local platform as `python -m capacity.controller SPEC`; the launcher
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

from capacity.catalog import Catalog
from capacity.ledger import Ledger, Snapshot
from capacity.local import LocalProvider, NodeBusy, local_catalog
from capacity.model import CapacityError, Node
from capacity.placement import Decision, Demand, plan
from meridian import launcher
from meridian.platform_state import PlatformState
from meridian.spec import PlatformSpec, load_spec

log = logging.getLogger("meridian.capacity")
INTERVAL_S = 5.0


def node_demand(spec: PlatformSpec, targets: dict[str, int]) -> list[Demand]:
    """Nodes each region needs for its target: the replicas that fit on one node, and
    never fewer than one, which keeps the region's ingress."""
    per_node = max(1, spec.ray.cpus_per_region_node // max(1, max(r.cpus_per_replica for r in spec.regions)))
    demands = []
    for region in spec.regions:
        replicas = targets.get(region.name, region.replicas)
        demands.append(Demand("local", region.slug, max(1, math.ceil(replicas / per_node)), "cpu", 1))
    return demands


def published_targets(spec: PlatformSpec, state: PlatformState) -> dict[str, int]:
    """Each autoscaled region's current target, as the router last polled it."""
    targets = {}
    for name, view in launcher.router_regions(state).items():
        scaling = (view.get("status") or {}).get("autoscaling")
        if scaling:
            targets[name] = int(scaling["target"])
    return targets


class CapacityLoop:
    def __init__(
        self,
        spec: PlatformSpec,
        provider: LocalProvider,
        ledger: Ledger,
        catalog: Catalog,
        targets: Callable[[], dict[str, int]],
        clock: Callable[[], float] = time.time,
    ):
        self.spec = spec
        self.provider = provider
        self.ledger = ledger
        self.catalog = catalog
        self.targets = targets
        self.clock = clock

    def tick(self) -> Decision:
        now = self.clock()
        nodes = self.provider.nodes()
        self.ledger.record_events(self.provider.events())
        demands = node_demand(self.spec, self.targets())
        recent = self.ledger.events(since_s=now - self.spec.capacity.event_memory_s)
        decision = plan(demands, nodes, self.catalog, self.spec.capacity, recent, now)
        for acquisition in decision.acquisitions:
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
        self.ledger.record_snapshot(
            Snapshot(now, tuple(self.provider.nodes()), {("local", d.region): d.replicas for d in demands})
        )
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
    spec = load_spec(argv[1])
    state = PlatformState.load(spec.name)
    if state is None:
        raise SystemExit(f"platform {spec.name} is not running")
    loop = CapacityLoop(
        spec,
        LocalProvider(spec, state),
        Ledger(state.directory),
        local_catalog(spec),
        targets=lambda: published_targets(spec, state),
    )
    while True:
        try:
            loop.tick()
        except Exception:  # one bad tick must not end the loop that keeps regions supplied
            log.exception("capacity tick failed")
        time.sleep(INTERVAL_S)


if __name__ == "__main__":
    main(sys.argv)
