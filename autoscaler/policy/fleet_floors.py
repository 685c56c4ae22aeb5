"""The global loop's decision: replica floors that regions' own policies must respect.

Each region's policy sizes the region to its own demand. Two things need the whole
fleet in view:

- **A region out of capacity.** When placement cannot get nodes for some of a
  region's replicas (stockouts, quota, no acceptable zone), that demand must be served
  elsewhere, so that replicas are warm there when the router spills the traffic. Where
  placement chose the region to fall back to (a `Spill`), that region gets the floor;
  what it has no room for, and what placement could place nowhere (a shortfall), goes
  to the next regions in the region's fallback order that still have room.
- **The fleet's warm minimum.** Regions may all scale to zero; the spec's
  `fleet.min_warm_replicas` keeps that many ready somewhere, in the regions that saw
  the most demand recently (the ones a request is likeliest to want).

Pure: plain views in, floors out. Floors are planned from each policy's own target,
never from one already raised by a floor, so a floor does not feed the next one. The
capacity loop computes them and publishes them; the Serve adapter of each region
applies max(its target, its floor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meridian_core.contracts import MAX_REASON, FleetFloor


@dataclass(frozen=True)
class RegionView:
    name: str
    target: int  # the region policy's own target
    max_replicas: int
    recent_requests: int  # arrivals over the recent window, for where to keep warm replicas


@dataclass(frozen=True)
class Spill:
    """Replicas of `origin` that placement chose to serve from `region` instead."""

    origin: str
    region: str
    replicas: int


def fleet_floors(
    regions: Sequence[RegionView],
    shortfalls: Mapping[str, int],
    fallback_order: Mapping[str, Sequence[str]],
    min_warm_replicas: int,
    spills: Sequence[Spill] = (),
) -> dict[str, FleetFloor]:
    """Floors per region name; regions without one are absent."""
    by_name = {r.name: r for r in regions}
    floors: dict[str, FleetFloor] = {}
    unplaced = dict(shortfalls)

    def planned(name: str) -> int:
        floor = floors.get(name)
        return max(by_name[name].target, floor.replicas if floor else 0)

    def raise_floor(name: str, replicas: int, reason: str) -> None:
        floors[name] = FleetFloor(replicas=replicas, reason=reason[:MAX_REASON])

    for spill in spills:
        moved = 0
        if spill.region in by_name and spill.region != spill.origin:
            moved = min(by_name[spill.region].max_replicas - planned(spill.region), spill.replicas)
        if moved > 0:
            raise_floor(spill.region, planned(spill.region) + moved, f"serves {spill.origin}: placed here")
        if spill.replicas > moved:
            unplaced[spill.origin] = unplaced.get(spill.origin, 0) + spill.replicas - moved

    for short_region, missing in sorted(unplaced.items()):
        for candidate in fallback_order.get(short_region, ()):
            if missing <= 0:
                break
            if candidate not in by_name or candidate == short_region:
                continue
            room = by_name[candidate].max_replicas - planned(candidate)
            moved = min(room, missing)
            if moved > 0:
                raise_floor(candidate, planned(candidate) + moved, f"serves {short_region}: out of capacity there")
                missing -= moved

    warm = sum(planned(r.name) for r in regions)
    for region in sorted(regions, key=lambda r: (-r.recent_requests, r.name)):
        if warm >= min_warm_replicas:
            break
        room = region.max_replicas - planned(region.name)
        added = min(room, min_warm_replicas - warm)
        if added > 0:
            raise_floor(region.name, planned(region.name) + added, f"fleet minimum of {min_warm_replicas} warm")
            warm += added
    return floors
