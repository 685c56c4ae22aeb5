"""Where is the client? Locators are tried in the spec's order; the first that knows wins.

- `header`: `X-Client-Location: <lat>,<lon>`, set by the caller. A malformed value is
  the caller's error (400), not a reason to guess.
- `cdn`: coordinates an edge already resolved: CloudFront's
  `CloudFront-Viewer-Latitude`/`-Longitude`, Cloudflare's `cf-iplatitude`/`cf-iplongitude`.
- `geoip`: the client's IP looked up in a MaxMind `.mmdb` City database. The IP is the
  socket peer, or, behind `trusted_proxy_hops` proxies of our own, the entry that many
  places from the right of `X-Forwarded-For` (entries further left are client-supplied
  and can be forged).
- the configured default, always last.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from geo_router.live.requests import InvalidRequest
from meridian_core.geo import LatLon, parse_lat_lon

LOCATION_HEADER = "x-client-location"
CDN_HEADER_PAIRS = (
    ("cloudfront-viewer-latitude", "cloudfront-viewer-longitude"),
    ("cf-iplatitude", "cf-iplongitude"),
)


class GeoIPDatabase(Protocol):
    def get(self, ip: str) -> object: ...


@dataclass(frozen=True)
class Located:
    location: LatLon
    source: str  # header | cdn | geoip | default


def client_ip(headers: Mapping[str, str], peer: str | None, trusted_proxy_hops: int) -> str | None:
    """The client's address: the peer, or the right entry of a trusted X-Forwarded-For chain."""
    if trusted_proxy_hops == 0:
        return peer
    chain = [part.strip() for part in headers.get("x-forwarded-for", "").split(",") if part.strip()]
    if len(chain) < trusted_proxy_hops:
        return None  # the request did not come through all our proxies: trust nothing in it
    return chain[-trusted_proxy_hops]


def _coordinate(value: str | None, limit: float) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and -limit <= number <= limit else None


class ClientLocator:
    def __init__(
        self,
        order: list[str],
        default: LatLon,
        *,
        geoip: GeoIPDatabase | None = None,
        trusted_proxy_hops: int = 0,
    ):
        self.order = order
        self.default = default
        self.geoip = geoip
        self.trusted_proxy_hops = trusted_proxy_hops

    def locate(self, headers: Mapping[str, str], peer: str | None) -> Located:
        for source in self.order:
            location = getattr(self, f"_from_{source}")(headers, peer)
            if location is not None:
                return Located(location, source)
        return Located(self.default, "default")

    def _from_header(self, headers: Mapping[str, str], peer: str | None) -> LatLon | None:
        value = headers.get(LOCATION_HEADER)
        if value is None:
            return None
        try:
            return parse_lat_lon(value)
        except ValueError as error:
            raise InvalidRequest(f"X-Client-Location: {error}", param="X-Client-Location") from None

    def _from_cdn(self, headers: Mapping[str, str], peer: str | None) -> LatLon | None:
        for lat_header, lon_header in CDN_HEADER_PAIRS:
            lat, lon = _coordinate(headers.get(lat_header), 90), _coordinate(headers.get(lon_header), 180)
            if lat is not None and lon is not None:
                return LatLon(lat, lon)
        return None

    def _from_geoip(self, headers: Mapping[str, str], peer: str | None) -> LatLon | None:
        if self.geoip is None:
            return None
        return self.from_ip(client_ip(headers, peer, self.trusted_proxy_hops))

    def from_ip(self, ip: str | None) -> LatLon | None:
        """Where the GeoIP database puts `ip`; None for an address it cannot place."""
        if self.geoip is None:
            return None
        try:
            address = ipaddress.ip_address(ip or "")
        except ValueError:
            return None
        if not address.is_global:
            return None
        record = self.geoip.get(str(address))
        location = record.get("location") if isinstance(record, dict) else None
        if not location or "latitude" not in location or "longitude" not in location:
            return None
        return LatLon(float(location["latitude"]), float(location["longitude"]))


def open_geoip(path: Path) -> GeoIPDatabase:
    import maxminddb

    return maxminddb.open_database(str(path))
