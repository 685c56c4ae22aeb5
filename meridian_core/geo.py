"""Great-circle geometry: plain functions over (lat, lon) in degrees."""

from __future__ import annotations

import math
from typing import NamedTuple

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)


class LatLon(NamedTuple):
    lat: float
    lon: float


def haversine_km(a: LatLon, b: LatLon) -> float:
    phi1, phi2 = math.radians(a.lat), math.radians(b.lat)
    dphi = phi2 - phi1
    dlmb = math.radians(b.lon - a.lon)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def parse_lat_lon(text: str) -> LatLon:
    """Parse '<lat>,<lon>' in decimal degrees; ValueError with a readable message otherwise."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"expected '<lat>,<lon>', got {text!r}")
    try:
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"expected two decimal numbers '<lat>,<lon>', got {text!r}") from None
    if not (math.isfinite(lat) and -90 <= lat <= 90):
        raise ValueError(f"latitude must be within [-90, 90], got {parts[0].strip()}")
    if not (math.isfinite(lon) and -180 <= lon <= 180):
        raise ValueError(f"longitude must be within [-180, 180], got {parts[1].strip()}")
    return LatLon(lat, lon)
