"""`meridian capacity report`: per cloud, region and accelerator, what is held, what it
costs, how busy it is, what went wrong in the last hour (stockouts, preemptions, nodes
that never joined their cluster) and how much quota is left. Pure: a ledger snapshot,
events, the catalog and the spec in; rows out."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from capacity.catalog import Catalog
from capacity.live.ledger import Snapshot
from capacity.model import CapacityEvent, EventKind, Market, NodeState
from meridian_core.capacity_spec import CapacitySpec

WINDOW_S = 3600.0
PREEMPTIONS = (EventKind.PREEMPTED, EventKind.PREEMPTION_NOTICE)


def report_rows(
    snapshot: Snapshot, events: Sequence[CapacityEvent], catalog: Catalog, spec: CapacitySpec, now_s: float
) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}

    def row(cloud: str, region: str, accelerator: str) -> dict[str, Any]:
        return rows.setdefault(
            (cloud, region, accelerator),
            {
                "cloud": cloud,
                "region": region,
                "accelerator": accelerator,
                "nodes": {str(Market.ON_DEMAND): 0, str(Market.SPOT): 0},
                "gpus": 0,
                "usd_per_hour": 0.0,
                "unpriced_nodes": 0,
                "stockouts_1h": 0,
                "preemptions_1h": 0,
                "failed_joins_1h": 0,
            },
        )

    held: dict[tuple[str, str], int] = defaultdict(int)
    for node in snapshot.nodes:
        if node.state is NodeState.TERMINATED:
            continue
        offering = catalog.for_placement(node.placement)
        accelerator = offering.accelerator if offering is not None else None
        entry = row(node.placement.cloud, node.placement.region, accelerator.name if accelerator else "-")
        entry["nodes"][str(node.placement.market)] += 1
        entry["gpus"] += accelerator.count if accelerator else 0
        price = catalog.price(node.placement)
        if price is None:
            entry["unpriced_nodes"] += 1
        else:
            entry["usd_per_hour"] += price
        held[(node.placement.cloud, node.placement.region)] += 1

    for event in events:
        if now_s - event.at_s > WINDOW_S:
            continue
        offering = catalog.for_placement(event.placement)
        accelerator = offering.accelerator.name if offering is not None and offering.accelerator else "-"
        entry = row(event.placement.cloud, event.placement.region, accelerator)
        if event.kind is EventKind.STOCKOUT:
            entry["stockouts_1h"] += 1
        elif event.kind in PREEMPTIONS:
            entry["preemptions_1h"] += 1
        elif event.kind is EventKind.JOIN_FAILED:
            entry["failed_joins_1h"] += 1

    for (cloud, region, accelerator), entry in rows.items():
        wanted = snapshot.demand.get((cloud, region), 0)
        nodes = held.get((cloud, region), 0)
        entry["utilisation"] = round(min(1.0, wanted / nodes), 3) if nodes else None
        limit = spec.quota(cloud, region, accelerator)
        entry["quota_headroom"] = None if limit is None else limit - entry["gpus"]
        entry["usd_per_hour"] = round(entry["usd_per_hour"], 4)
        entry["projected_usd_per_day"] = round(entry["usd_per_hour"] * 24, 2)
    return sorted(rows.values(), key=lambda r: (r["cloud"], r["region"], r["accelerator"]))
