"""A region's capacity loop: nodes for the replicas the region's autoscaler wants.

One runs beside each region's Ray cluster, connected to it. Every few seconds it reads
the region's replica target (the autoscaler's decision, published in the cluster's KV;
a fixed region's `replicas`), turns it into node demand, asks the placement policy
(capacity/policy/placement.py, the simulator's code) what to buy and release, and
carries that out through the region's provider (local Ray nodes, EC2 or Compute Engine),
writing every event and the held nodes to the region's ledger, which `meridian capacity
report` reads.

A region's replicas run only on its own cluster's nodes, so what placement cannot get
in the region (stockouts, quota, backoff) is not bought elsewhere: the loop reports it
as a `CapacityReport` in the cluster's KV, the region's /status carries it, and the
global loop (autoscaler/live/global_loop.py) turns it into floors in other regions.

A node missing from the region's cluster for `capacity.join_timeout_s` since the loop
first listed it or last found it there (its boot failed, or Ray on it died) carries no
replica: the loop releases it, records a `join_failed` event, counts it, and buys again
in the same tick.

Run as `python -m capacity.live.capacity_loop SPEC REGION`; the launcher starts one per
region. Releases go through the provider's drain, which refuses a node still running
something, so a replica is never killed under its requests; another idle node of the
same kind is released instead, or none this tick.

What it reads from elsewhere cannot stop it: a published view that breaks its contract
is logged and counted, and the region's nodes stay as they are for that tick; a target
past the region's `max_replicas` is taken as `max_replicas`; unreadable ledger lines are
skipped (capacity/live/ledger.py); and a tick that fails is logged and counted, and the
next one runs.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from functools import partial

from autoscaler.live.published import drop_malformed, publish_capacity, read_published
from capacity.catalog import Catalog, SpotQuote
from capacity.live.ledger import Ledger, Snapshot, log_malformed
from capacity.live.providers import provider_for, spot_quotes_for
from capacity.model import (
    CapacityError,
    CapacityEvent,
    EventKind,
    Node,
    NodeBusy,
    NodeState,
    Provider,
    ProviderError,
)
from capacity.policy.placement import Demand, PlacementDecision, plan
from meridian_core.contracts import MAX_REASON, CapacityReport, MalformedMessage, ScalingView
from meridian_core.spec import PlatformSpec, RegionSpec, load_spec
from meridian_host.platform_state import PlatformState
from meridian_host.ray_nodes import NODE_LABEL, alive_nodes_labelled
from meridian_host.region_tokens import dashboard_headers

log = logging.getLogger("meridian.capacity")
INTERVAL_S = 5.0
# Spot prices move over hours; EC2 rate-limits its price history.
PRICE_REFRESH_S = 600.0


# ray.serve.llm adds the Serve replica actor's CPU to the engine's placement bundle,
# and a starting replica runs a model-download task that needs a CPU of the node's own.
REPLICA_ACTOR_CPUS = 1
NODE_TASK_CPUS = 1


def replicas_per_node(spec: PlatformSpec, region: RegionSpec) -> int:
    usable = spec.ray.cpus_per_region_node - NODE_TASK_CPUS
    return max(1, usable // (region.cpus_per_replica + REPLICA_ACTOR_CPUS))


def catalog_region(region: RegionSpec) -> str:
    """The region as its provider's catalog names it: the cloud's own region name, or,
    for local nodes, the region's slug."""
    return region.slug if region.capacity.provider == "local" else region.capacity.region


def wanted_replicas(spec: PlatformSpec, region: RegionSpec, target: int | None) -> int:
    """The replicas the region's nodes are for, over all its models: a fixed region's
    count; an autoscaled one's published target, never past its bound whatever was
    published, and before it publishes what each model starts with."""
    _, most = spec.replica_bounds(region)
    if region.autoscaling is None:
        return most
    if target is None:
        return region.autoscaling.initial_replicas * len(spec.models)
    return min(target, most)


def node_demand(spec: PlatformSpec, region: RegionSpec, replicas: int) -> Demand:
    """Nodes for `replicas`: the replicas that fit on one node, and never fewer than
    one, so a region that scaled to zero replicas starts its next one without waiting
    for a machine."""
    nodes = max(1, math.ceil(replicas / replicas_per_node(spec, region)))
    return Demand(region.capacity.provider, catalog_region(region), nodes, region.accelerator, 1)


def published_scaling(region: RegionSpec) -> ScalingView | None:
    """The region's latest published decision, read from its cluster's KV; None for a
    fixed region or before the first decision, so the region keeps its fixed count.
    Raises MalformedMessage when the one there breaks its contract."""
    if region.autoscaling is None:
        return None
    return read_published(region.slug)


def unplaced(
    spec: PlatformSpec, region: RegionSpec, replicas: int, demand: Demand, decision: PlacementDecision, now: float
) -> CapacityReport:
    """The replicas of `replicas` that the nodes the decision places cannot carry. A
    fallback to another region is not bought (a region's replicas cannot run on its
    nodes), so it counts as unplaced too, for the global loop to place."""
    missing_nodes = sum(s.nodes for s in decision.shortfalls) + sum(f.nodes for f in decision.fallbacks)
    placed_nodes = max(0, demand.replicas - missing_nodes)
    reasons = [s.reason for s in decision.shortfalls] + [f.reason for f in decision.fallbacks]
    return CapacityReport(
        unplaced_replicas=max(0, replicas - placed_nodes * replicas_per_node(spec, region)),
        reason="; ".join(reasons)[:MAX_REASON],
        at=now,
    )


class JoinWatch:
    """Since when each held node has been missing from its region's Ray cluster, on the
    loop's own clock: from the tick that first lists it or last found it there. While the
    cluster cannot say which nodes it has, every node counts as found, so an outage of
    Ray's state API never releases a node. Only pending and running nodes the provider
    labels are watched; a draining one is on its way out."""

    def __init__(self) -> None:
        self._missing_since: dict[str, float] = {}  # node id -> s; only the nodes held now

    def overdue(self, nodes: list[Node], joined: set[str] | None, now: float, timeout_s: float) -> list[Node]:
        """The watched nodes missing from the cluster for over `timeout_s`, given the Ray
        labels of its alive nodes (`joined`; None when it cannot say)."""
        watched = [
            node
            for node in nodes
            if node.state in (NodeState.PENDING, NodeState.RUNNING) and node.ray_label is not None
        ]
        self._missing_since = {
            node.id: now if joined is None or node.ray_label in joined else self._missing_since.get(node.id, now)
            for node in watched
        }
        return [node for node in watched if now - self._missing_since[node.id] > timeout_s]

    def missing_for(self, node_id: str, now: float) -> float:
        return now - self._missing_since[node_id]


class CapacityLoop:
    def __init__(
        self,
        spec: PlatformSpec,
        region: RegionSpec,
        provider: Provider,
        ledger: Ledger,
        catalog: Catalog,
        scaling: Callable[[], ScalingView | None],
        report: Callable[[CapacityReport], None],
        spot_quotes: Callable[[], list[SpotQuote]] = list,
        clock: Callable[[], float] = time.time,
        on_malformed: Callable[[MalformedMessage], None] = log_malformed,
        # The Ray labels of the cluster's alive nodes; None when the cluster cannot say.
        joined: Callable[[], set[str] | None] = lambda: None,
        count_unjoined: Callable[[], None] = lambda: None,
    ):
        self.spec = spec
        self.region = region
        self.provider = provider
        self.ledger = ledger
        self.catalog = catalog
        self.scaling = scaling
        self.report = report
        self.spot_quotes = spot_quotes
        self.clock = clock
        self.on_malformed = on_malformed
        self.joined = joined
        self.count_unjoined = count_unjoined
        self._join_watch = JoinWatch()
        self._prices_at = -math.inf
        self._over_bound = False

    def refresh_prices(self, now: float) -> None:
        """Spot prices of the region's own zones, at most every PRICE_REFRESH_S; a quote for
        a zone the region cannot launch in is not taken. A refresh that fails keeps the
        prices there are: placement goes on with them."""
        if now - self._prices_at < PRICE_REFRESH_S:
            return
        self._prices_at = now
        zones = {offering.zone for offering in self.catalog.offerings()}
        try:
            quotes = [quote for quote in self.spot_quotes() if quote.zone in zones]
        except ProviderError as error:
            log.warning("spot prices not refreshed: %s", error)
            return
        self.catalog.apply_spot_quotes(quotes)

    def tick(self) -> PlacementDecision | None:
        """One round of placement; None, with nothing bought or released, when the
        region's published view breaks its contract: its fixed count is no stand-in for
        the target it lost."""
        now = self.clock()
        self.refresh_prices(now)
        nodes = self._release_unjoined(self.provider.nodes(), now)
        self.ledger.record_events(self.provider.events())
        try:
            view = self.scaling()
        except MalformedMessage as error:
            self.on_malformed(error)
            return None
        target = view.target if view else None
        replicas = wanted_replicas(self.spec, self.region, target)
        self._note_over_bound(target, replicas)
        demand = node_demand(self.spec, self.region, replicas)
        recent = self.ledger.events(since_s=now - self.spec.capacity.event_memory_s)
        capacity = self.spec.capacity
        if self.region.capacity.market == "on-demand":  # no spot, so no spot spare to stand in for either
            capacity = capacity.model_copy(update={"spot_enabled": False})
        decision = plan([demand], nodes, self.catalog, capacity, recent, now)
        for acquisition in decision.acquisitions:
            if acquisition.is_fallback:
                continue  # counted as unplaced, for the global loop (see `unplaced`)
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
        self.report(unplaced(self.spec, self.region, replicas, demand, decision, now))
        self.ledger.record_snapshot(Snapshot(now, tuple(self.provider.nodes()), {demand.home: demand.replicas}))
        return decision

    def _release_unjoined(self, nodes: list[Node], now: float) -> list[Node]:
        """`nodes` less those released for having been missing from the cluster too long."""
        timeout_s = self.spec.capacity.join_timeout_s
        gone: set[str] = set()
        for node in self._join_watch.overdue(nodes, self.joined(), now, timeout_s):
            missing_s = self._join_watch.missing_for(node.id, now)
            log.warning("%s has not been in the region's Ray cluster for %.0f s: releasing it", node.id, missing_s)
            try:
                self.provider.release(node.id)
            except (NodeBusy, KeyError) as refused:
                log.warning("could not release %s: %s", node.id, refused)
                continue
            message = f"not in the region's Ray cluster for {missing_s:.0f} s (join_timeout_s {timeout_s:g})"
            self.ledger.record_events([CapacityEvent(EventKind.JOIN_FAILED, node.placement, now, node.id, message)])
            self.count_unjoined()
            gone.add(node.id)
        return [node for node in nodes if node.id not in gone]

    def _note_over_bound(self, target: int | None, replicas: int) -> None:
        """Warn when a published target starts being over the region's bound, not every tick it stays there."""
        over = target is not None and target > replicas
        if over and not self._over_bound:
            log.warning("published target %d is over the region's max_replicas: nodes for %d", target, replicas)
        self._over_bound = over

    def _release(self, node_id: str, nodes: list[Node], released: set[str], reason: str) -> None:
        """Release `node_id`, or, if the provider finds it busy, an idle node of the same kind."""
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


def joined_labels(dashboard_url: str, headers: dict[str, str]) -> set[str] | None:
    """The `meridian.io/node` labels of the cluster's alive nodes; None when Ray's state API does not answer."""
    alive = alive_nodes_labelled(dashboard_url, NODE_LABEL, headers)
    return None if alive is None else set(alive)


def supervised_tick(loop: CapacityLoop, count_failure: Callable[[str], None]) -> None:
    """One tick that cannot end the loop: a failure is logged and counted by kind
    (provider: the cloud refused a call; unexpected), and a count that fails is logged."""
    try:
        loop.tick()
        return
    except ProviderError as error:  # credentials, permissions, settings: one line naming the call
        log.error("%s", error)
        kind = "provider"
    except Exception:  # one bad tick must not end the loop that keeps the region supplied
        log.exception("capacity tick failed")
        kind = "unexpected"
    try:
        count_failure(kind)
    except Exception as failure:  # the count is best effort; the loop is not
        log.warning("could not count a failed tick: %s", failure)


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line a poll otherwise
    spec = load_spec(argv[1])
    region = spec.region(argv[2])
    state = PlatformState.load(spec.name)
    if state is None or region.name not in state.clusters:
        raise SystemExit(f"platform {spec.name} has no cluster for {region.name}")
    cluster = state.clusters[region.name]
    import ray

    ray.init(address=cluster.gcs_address, logging_level=logging.WARNING, log_to_driver=False)
    provider, catalog = provider_for(spec, region, state)
    headers = dashboard_headers(state, cluster)
    from ray.util.metrics import Counter

    failures = Counter(
        "meridian_capacity_tick_failures",
        description="Capacity-loop ticks that failed, by region and kind (provider: the cloud refused a call).",
        tag_keys=("region", "kind"),
    )
    unjoined_nodes = Counter(
        "meridian_capacity_unjoined_nodes",
        description="Nodes released for not joining their region's Ray cluster within capacity.join_timeout_s.",
        tag_keys=("region",),
    )
    dropped = partial(drop_malformed, reader="capacity loop", log=log)
    loop = CapacityLoop(
        spec,
        region,
        provider,
        Ledger(state.cluster_dir(region.slug), on_malformed=dropped),
        catalog,
        scaling=lambda: published_scaling(region),
        report=lambda report: publish_capacity(region.slug, report),
        spot_quotes=spot_quotes_for(provider, region),
        on_malformed=dropped,
        joined=lambda: joined_labels(cluster.dashboard_url, headers),
        count_unjoined=lambda: unjoined_nodes.inc(1, tags={"region": region.name}),
    )
    while True:
        supervised_tick(loop, lambda kind: failures.inc(1, tags={"region": region.name, "kind": kind}))
        time.sleep(INTERVAL_S)


if __name__ == "__main__":
    main(sys.argv)
