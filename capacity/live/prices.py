"""Spot price quotes for the catalog (`Catalog.apply_spot_quotes`) from AWS and GCP.

AWS: `DescribeSpotPriceHistory` with `StartTime=now` returns, per zone and instance
type, the last price change before now, i.e. the current spot price.

GCP has no price field in the Compute API; prices are SKUs of the Cloud Billing
Catalog API (`services.skus.list`, Compute Engine is service 6F81-5844-456A). A
machine type's spot price is assembled from its family's per-vCPU and per-GiB SKUs
plus its GPUs' SKU, all of usageType Preemptible (descriptions start "Spot
Preemptible ", or "Preemptible " for older SKUs), the same host + GPU sum the catalog
makes of the list-price extract. GCP prices are regional, so each zone of a region
gets the region's quote.
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

from capacity.catalog import SpotQuote

COMPUTE_ENGINE_SERVICE = "6F81-5844-456A"
BILLING_ENDPOINT = "https://cloudbilling.googleapis.com"


def aws_spot_quotes(
    ec2: Any,
    instance_types: Sequence[str],
    *,
    product_descriptions: Sequence[str] = ("Linux/UNIX",),
    now_s: float | None = None,
) -> list[SpotQuote]:
    """The current spot price of each instance type in each zone of the client's region."""
    pages = ec2.get_paginator("describe_spot_price_history").paginate(
        InstanceTypes=list(instance_types),
        ProductDescriptions=list(product_descriptions),
        StartTime=datetime.fromtimestamp(time.time() if now_s is None else now_s, UTC),
    )
    latest: dict[tuple[str, str], SpotQuote] = {}
    for page in pages:
        for entry in page["SpotPriceHistory"]:
            quote = SpotQuote(
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


def gcp_spot_quotes(
    skus: Iterable[Mapping[str, Any]],
    machine_types: Mapping[str, GcpMachineShape],
    zones_by_region: Mapping[str, Sequence[str]],
) -> list[SpotQuote]:
    """A quote per zone for every machine type whose spot SKUs are all priced in its region."""
    rates: dict[tuple[str, str], tuple[float, float]] = {}  # (region, item) -> (usd, at)
    for sku in skus:
        priced = _spot_rate(sku)
        if priced is None:
            continue
        item, usd, at_s = priced
        for region in sku.get("serviceRegions", []):
            rates[(region, item)] = (usd, at_s)
    quotes = []
    for region, zones in zones_by_region.items():
        for instance_type, shape in machine_types.items():
            parts = [(f"{shape.family} Instance Core", shape.vcpus), (f"{shape.family} Instance Ram", shape.memory_gib)]
            if shape.gpu and shape.gpus:
                parts.append((f"{shape.gpu} GPU", shape.gpus))
            found = [(rates.get((region, item)), amount) for item, amount in parts]
            if any(rate is None for rate, _ in found):
                continue
            usd = sum(rate[0] * amount for rate, amount in found)
            at_s = max(rate[1] for rate, _ in found)
            quotes.extend(SpotQuote("gcp", region, zone, instance_type, usd, at_s) for zone in zones)
    return quotes


def _spot_rate(sku: Mapping[str, Any]) -> tuple[str, float, float] | None:
    """(item, USD per unit-hour, effective time) of a per-hour spot Compute SKU, else None."""
    category = sku.get("category", {})
    if category.get("usageType") != "Preemptible" or category.get("resourceFamily") != "Compute":
        return None
    if not sku.get("pricingInfo"):
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
    return item, usd, at_s
