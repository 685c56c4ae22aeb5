"""Price quotes for the catalog: AWS spot prices and GCP list prices, as plain data.

AWS: `DescribeSpotPriceHistory` with `StartTime=now` returns, per zone and instance
type, the last price change before now, i.e. the current spot price.

GCP has no price field in the Compute API; prices are SKUs of the Cloud Billing
Catalog API (`services.skus.list`, Compute Engine is service 6F81-5844-456A). A
machine type's hourly price is assembled from its family's per-vCPU and per-GiB SKUs
plus its GPUs' SKU, for on-demand (usageType OnDemand) and spot (usageType
Preemptible, descriptions starting "Spot Preemptible " or, for older SKUs, "Preemptible "). GCP prices are regional, so
each zone of a region gets the region's quote.
https://cloud.google.com/billing/docs/reference/rest/v1/services.skus/list
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from capacity.model import Market

COMPUTE_ENGINE_SERVICE = "6F81-5844-456A"
BILLING_ENDPOINT = "https://cloudbilling.googleapis.com"


@dataclass(frozen=True)
class PriceQuote:
    cloud: str
    region: str
    zone: str
    instance_type: str
    usd_per_h: float
    at_s: float  # when the price took effect, seconds since the epoch
    market: Market = Market.SPOT


def aws_spot_quotes(
    ec2: Any,
    instance_types: Sequence[str],
    *,
    product_descriptions: Sequence[str] = ("Linux/UNIX",),
    now_s: float | None = None,
) -> list[PriceQuote]:
    """The current spot price of each instance type in each zone of the client's region."""
    pages = ec2.get_paginator("describe_spot_price_history").paginate(
        InstanceTypes=list(instance_types),
        ProductDescriptions=list(product_descriptions),
        StartTime=datetime.fromtimestamp(time.time() if now_s is None else now_s, UTC),
    )
    latest: dict[tuple[str, str], PriceQuote] = {}
    for page in pages:
        for entry in page["SpotPriceHistory"]:
            quote = PriceQuote(
                "aws",
                ec2.meta.region_name,
                entry["AvailabilityZone"],
                entry["InstanceType"],
                float(entry["SpotPrice"]),
                entry["Timestamp"].timestamp(),
            )
            key = (quote.zone, quote.instance_type)
            if key not in latest or latest[key].at_s < quote.at_s:
                latest[key] = quote
    return sorted(latest.values(), key=lambda quote: (quote.zone, quote.instance_type))


@dataclass(frozen=True)
class GcpMachineShape:
    """What a GCP machine type is billed for; the names are the SKU descriptions' words."""

    family: str  # "A2" as in "A2 Instance Core running in Americas"
    vcpus: int
    memory_gib: float
    gpu: str | None = None  # "Nvidia Tesla A100" as in "Nvidia Tesla A100 GPU running in Americas"
    gpus: int = 0


def fetch_billing_skus(
    endpoint: str = BILLING_ENDPOINT,
    *,
    service: str = COMPUTE_ENGINE_SERVICE,
    api_key: str | None = None,
    timeout_s: float = 30.0,
) -> list[dict[str, Any]]:
    """Every SKU of `service`, following `nextPageToken`, priced in USD."""
    skus: list[dict[str, Any]] = []
    token = ""
    while True:
        query = {
            "currencyCode": "USD",
            **({"pageToken": token} if token else {}),
            **({"key": api_key} if api_key else {}),
        }
        url = f"{endpoint.rstrip('/')}/v1/services/{service}/skus?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            page = json.load(reply)
        skus.extend(page.get("skus", []))
        token = page.get("nextPageToken", "")
        if not token:
            return skus


def gcp_quotes(
    skus: Iterable[Mapping[str, Any]],
    machine_types: Mapping[str, GcpMachineShape],
    zones_by_region: Mapping[str, Sequence[str]],
) -> list[PriceQuote]:
    """Quotes for every machine type whose SKUs are all priced in a region, in both markets."""
    rates: dict[tuple[Market, str, str], tuple[float, float]] = {}  # (market, region, item) -> (usd, at)
    for sku in skus:
        priced = _rate(sku)
        if priced is None:
            continue
        market, item, usd, at_s = priced
        for region in sku.get("serviceRegions", []):
            rates[(market, region, item)] = (usd, at_s)
    quotes = []
    for region, zones in zones_by_region.items():
        for market in Market:
            for instance_type, shape in machine_types.items():
                parts = [
                    (f"{shape.family} Instance Core", shape.vcpus),
                    (f"{shape.family} Instance Ram", shape.memory_gib),
                ]
                if shape.gpu and shape.gpus:
                    parts.append((f"{shape.gpu} GPU", shape.gpus))
                found = [(rates.get((market, region, item)), amount) for item, amount in parts]
                if any(rate is None for rate, _ in found):
                    continue
                usd = sum(rate[0] * amount for rate, amount in found)
                at_s = max(rate[1] for rate, _ in found)
                quotes.extend(PriceQuote("gcp", region, zone, instance_type, usd, at_s, market) for zone in zones)
    return quotes


def _rate(sku: Mapping[str, Any]) -> tuple[Market, str, float, float] | None:
    """(market, item, USD per unit-hour, effective time) of a per-hour Compute SKU, else None."""
    category = sku.get("category", {})
    market = {"OnDemand": Market.ON_DEMAND, "Preemptible": Market.SPOT}.get(category.get("usageType", ""))
    if market is None or category.get("resourceFamily") != "Compute" or not sku.get("pricingInfo"):
        return None
    pricing = sku["pricingInfo"][-1]
    expression = pricing["pricingExpression"]
    if expression.get("usageUnit") not in ("h", "GiBy.h"):
        return None
    # The last tier is the rate past any free allowance; Compute SKUs usually have one tier.
    price = expression["tieredRates"][-1]["unitPrice"]
    usd = int(price.get("units", 0) or 0) + int(price.get("nanos", 0) or 0) / 1e9
    description = sku.get("description", "").removeprefix("Spot ").removeprefix("Preemptible ")
    item = description.split(" running in ")[0]
    at_s = datetime.fromisoformat(pricing["effectiveTime"].replace("Z", "+00:00")).timestamp()
    return market, item, usd, at_s
