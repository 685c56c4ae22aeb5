"""Which regions may serve a request, best first. Pure: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from geo_router.geo import LatLon, haversine_km


@dataclass(frozen=True)
class RegionState:
    """What the router knows of one region at one instant."""

    name: str
    location: LatLon
    healthy: bool
    ready_replicas: int
    models: frozenset[str]

    def can_serve(self, model: str) -> bool:
        return self.healthy and self.ready_replicas > 0 and model in self.models


def rank_regions(client: LatLon, regions: Iterable[RegionState], model: str) -> list[RegionState]:
    """Regions able to serve `model`, nearest to the client first (ties by name)."""
    candidates = [r for r in regions if r.can_serve(model)]
    return sorted(candidates, key=lambda r: (haversine_km(client, r.location), r.name))
