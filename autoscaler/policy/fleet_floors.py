"""The global loop's decision: replica floors that regions' own policies must respect.

Each region's policy sizes the region to its own demand. Two things need the whole
fleet in view:

- **A region out of capacity.** When placement cannot get nodes for some of a
  region's replicas (stockouts, quota, no acceptable zone), that demand must be served
  elsewhere: the next regions in the region's fallback order that still have room get
  a floor of those replicas, so they are warm when the router spills the traffic.
- **The fleet's warm minimum.** Regions may all scale to zero; the spec's
  `fleet.min_warm_replicas` keeps that many ready somewhere, in the regions that saw
  the most demand recently (the ones a request is likeliest to want).

Pure: plain views in, floors out. Floors are planned from each policy's own target,
never from one already raised by a floor, so a floor does not feed the next one. The
global loop (autoscaler/live/global_loop.py) computes them and sends them to the
regions; the Serve adapter of each region applies max(its target, its floor).
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


def fleet_floors(
    regions: Sequence[RegionView],
    shortfalls: Mapping[str, int],
    fallback_order: Mapping[str, Sequence[str]],
    min_warm_replicas: int,
) -> dict[str, FleetFloor]:
    """Floors per region name; regions without one are absent."""
    by_name = {r.name: r for r in regions}
    floors: dict[str, FleetFloor] = {}

    def planned(name: str) -> int:
        floor = floors.get(name)
        return max(by_name[name].target, floor.replicas if floor else 0)

    def raise_floor(name: str, replicas: int, reason: str) -> None:
        floors[name] = FleetFloor(replicas=replicas, reason=reason[:MAX_REASON])

    for short_region, missing in sorted(shortfalls.items()):
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
