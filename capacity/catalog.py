"""What each cloud sells: instance types, their accelerators, and on-demand and spot prices.

The default catalog is the public list-price extract of skypilot-org/skypilot-catalog
(schema v7) packaged in `capacity/data/` (a byte-identical copy of
`shared/data/catalog/`; see the README there). Two quirks of that extract are handled
here:

- GCP host rows (`a2-highgpu-1g`, ...) price only vCPU and RAM; the GPU is a separate
  accelerator row. An offering's price is the host row plus the accelerator row with the
  matching count in the same region (`GCP_HOST_ACCELERATORS`).
- AWS `zone` values in the extract are AZ IDs (`use1-az1`), and only the first AZ of each
  region was kept. Spot quotes refreshed later (`apply_spot_quotes`) name zones the way
  the quoting API does (AZ names such as `us-east-1a`); a quote for a zone the catalog
  has not seen adds that zone, copied from the region's row, with the quoted spot price.

Every price records when it was last refreshed (`Price.refreshed_at_s`); list prices
from the extract have `None` there (the extract is a snapshot whose date is not
recorded, only its source commit, in `Price.source`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from capacity.model import Accelerator, Market, Placement

PACKAGED_DIR = Path(__file__).resolve().parent / "data"
CATALOG_FILES = ("gpu_prices_aws.csv", "gpu_prices_gcp.csv", "gpu_prices_aws_previous_generation.csv")
# Where each packaged file's prices come from (data/README.md); a user's file is a "catalog file".
FILE_SOURCES = {
    "gpu_prices_aws.csv": "skypilot-catalog v7 aws/vms.csv @27f67dd4",
    "gpu_prices_gcp.csv": "skypilot-catalog v7 gcp/vms.csv @6f65ab58",
    "gpu_prices_aws_previous_generation.csv": "AWS on-demand list price",
}

# GPU memory per device, GiB, from NVIDIA's data sheets (the extract has no memory column).
ACCELERATOR_MEMORY_GIB: dict[str, float] = {
    "A10G": 24,
    "L4": 24,
    "L40S": 48,
    "A100": 40,
    "A100-80GB": 80,
    "H100": 80,
    "H200": 141,
    "V100": 16,
    "K80": 12,
}

# The GPU each GCP host type carries (the extract README's "matching pairs").
GCP_HOST_ACCELERATORS: dict[str, tuple[str, int]] = {
    "a2-highgpu-1g": ("A100", 1),
    "a2-highgpu-8g": ("A100", 8),
    "a2-ultragpu-1g": ("A100-80GB", 1),
    "a3-highgpu-8g": ("H100", 8),
    "g2-standard-4": ("L4", 1),
}


class CatalogError(ValueError):
    """A catalog file that cannot be read as the extract's schema."""


@dataclass(frozen=True)
class Price:
    usd_per_h: float
    refreshed_at_s: float | None  # seconds since the epoch; None for the list-price snapshot
    source: str


@dataclass(frozen=True)
class Offering:
    """One instance type in one zone, with its prices in both markets."""

    cloud: str
    region: str
    zone: str
    instance_type: str
    accelerator: Accelerator | None  # None for CPU-only types
    vcpus: float
    memory_gib: float
    on_demand: Price | None
    spot: Price | None

    def price(self, market: Market) -> Price | None:
        return self.spot if market is Market.SPOT else self.on_demand

    def placement(self, market: Market) -> Placement:
        return Placement(self.cloud, self.region, self.zone, self.instance_type, market)


@dataclass(frozen=True)
class SpotQuote:
    """A refreshed spot price, e.g. from AWS describe_spot_price_history or GCP's pricing."""

    cloud: str
    region: str
    zone: str
    instance_type: str
    usd_per_h: float
    at_s: float


class Catalog:
    """A price table keyed by (cloud, region, zone, instance type); spot quotes update it in place."""

    def __init__(self, offerings: Iterable[Offering]) -> None:
        self._offerings: dict[tuple[str, str, str, str], Offering] = {}
        for offering in offerings:
            self._offerings[(offering.cloud, offering.region, offering.zone, offering.instance_type)] = offering

    def __len__(self) -> int:
        return len(self._offerings)

    def offerings(
        self,
        *,
        accelerator: str | None = None,
        accelerator_count: int | None = None,
        cloud: str | None = None,
        region: str | None = None,
    ) -> list[Offering]:
        """Offerings matching every filter given; accelerator names compare case-insensitively."""
        wanted = accelerator.lower() if accelerator is not None else None
        return [
            o
            for o in self._offerings.values()
            if (wanted is None or (o.accelerator is not None and o.accelerator.name.lower() == wanted))
            and (accelerator_count is None or (o.accelerator is not None and o.accelerator.count == accelerator_count))
            and (cloud is None or o.cloud == cloud)
            and (region is None or o.region == region)
        ]

    def find(self, cloud: str, region: str, zone: str, instance_type: str) -> Offering | None:
        return self._offerings.get((cloud, region, zone, instance_type))

    def for_placement(self, placement: Placement) -> Offering | None:
        """The placement's offering, or the same type's row elsewhere in its region (prices are per region)."""
        exact = self.find(placement.cloud, placement.region, placement.zone, placement.instance_type)
        if exact is not None:
            return exact
        return next(
            (
                o
                for o in self._offerings.values()
                if (o.cloud, o.region, o.instance_type) == (placement.cloud, placement.region, placement.instance_type)
            ),
            None,
        )

    def price(self, placement: Placement) -> float | None:
        offering = self.for_placement(placement)
        price = offering.price(placement.market) if offering is not None else None
        return price.usd_per_h if price is not None else None

    def cheapest_by_region(
        self,
        market: Market,
        *,
        accelerator: str | None = None,
        accelerator_count: int | None = None,
        cloud: str | None = None,
    ) -> list[Offering]:
        """The cheapest priced offering of each (cloud, region), cheapest region first."""
        best: dict[tuple[str, str], Offering] = {}
        for offering in self.offerings(accelerator=accelerator, accelerator_count=accelerator_count, cloud=cloud):
            price = offering.price(market)
            if price is None:
                continue
            key = (offering.cloud, offering.region)
            current = best.get(key)
            if current is None or price.usd_per_h < _usd(current, market):
                best[key] = offering
        return sorted(best.values(), key=lambda o: (_usd(o, market), o.cloud, o.region))

    def apply_spot_quotes(self, quotes: Iterable[SpotQuote]) -> list[SpotQuote]:
        """Record refreshed spot prices and when they were quoted; returns the quotes that matched nothing.

        A quote for a zone the catalog lacks, of an instance type it has in that region,
        adds the zone (on-demand prices are per region). A quote older than the price it
        would replace is ignored.
        """
        unmatched: list[SpotQuote] = []
        for quote in quotes:
            key = (quote.cloud, quote.region, quote.zone, quote.instance_type)
            template = self._offerings.get(key) or self.for_placement(
                Placement(quote.cloud, quote.region, quote.zone, quote.instance_type, Market.SPOT)
            )
            if template is None:
                unmatched.append(quote)
                continue
            current = self._offerings.get(key)
            if current is not None and current.spot is not None and (current.spot.refreshed_at_s or 0.0) > quote.at_s:
                continue
            spot = Price(quote.usd_per_h, quote.at_s, "spot quote")
            self._offerings[key] = replace(template, zone=quote.zone, spot=spot)
        return unmatched


def _usd(offering: Offering, market: Market) -> float:
    price = offering.price(market)
    assert price is not None
    return price.usd_per_h


def load_catalog(paths: Iterable[Path]) -> Catalog:
    """Read extract-format CSVs (`cloud,instance_type,accelerator,accelerator_count,vcpus,...`)."""
    hosts: list[dict[str, str]] = []
    gpu_rows: dict[tuple[str, str, str, int], dict[str, str]] = {}
    offerings: list[Offering] = []
    for path in paths:
        source = FILE_SOURCES.get(path.name, "catalog file") if path.parent == PACKAGED_DIR else "catalog file"
        with path.open(newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                row = {**row, "source": source}
                try:
                    if not row["instance_type"]:
                        count = int(row["accelerator_count"])
                        gpu_rows[(row["cloud"], row["region"], row["accelerator"], count)] = row
                    elif row["accelerator"] or row["cloud"] != "gcp":
                        offerings.append(_row_offering(row))
                    else:
                        hosts.append(row)
                except (KeyError, ValueError) as error:
                    raise CatalogError(f"{path}:{number}: {error!r}") from None
    for host in hosts:
        offerings.extend(_gcp_joined(host, gpu_rows))
    return Catalog(offerings)


def default_catalog(extra_files: Iterable[str | Path] = ()) -> Catalog:
    """The packaged list-price extract (AWS and GCP GPU types), and the spec's own
    catalog files (`capacity.catalog_files`) beside it."""
    return load_catalog([*(PACKAGED_DIR / name for name in CATALOG_FILES), *map(Path, extra_files)])


def _price(cell: str, source: str) -> Price | None:
    return Price(float(cell), None, source) if cell else None


def _accelerator(name: str, count: int) -> Accelerator:
    return Accelerator(name, count, ACCELERATOR_MEMORY_GIB.get(name, 0.0))


def _row_offering(row: dict[str, str]) -> Offering:
    accelerator = _accelerator(row["accelerator"], int(row["accelerator_count"])) if row["accelerator"] else None
    return Offering(
        cloud=row["cloud"],
        region=row["region"],
        zone=row["zone"],
        instance_type=row["instance_type"],
        accelerator=accelerator,
        vcpus=float(row["vcpus"]),
        memory_gib=float(row["memory_gib"]),
        on_demand=_price(row["price_per_hour_usd"], row["source"]),
        spot=_price(row["spot_price_per_hour_usd"], row["source"]),
    )


def _gcp_joined(host: dict[str, str], gpu_rows: dict[tuple[str, str, str, int], dict[str, str]]) -> list[Offering]:
    """A GCP host row plus its accelerator row: the price of the whole GPU VM."""
    pairing = GCP_HOST_ACCELERATORS.get(host["instance_type"])
    if pairing is None:
        return []
    name, count = pairing
    gpu = gpu_rows.get((host["cloud"], host["region"], name, count))
    if gpu is None:
        return []
    base = _row_offering(host)
    return [
        replace(
            base,
            accelerator=_accelerator(name, count),
            on_demand=_sum(base.on_demand, _price(gpu["price_per_hour_usd"], gpu["source"])),
            spot=_sum(base.spot, _price(gpu["spot_price_per_hour_usd"], gpu["source"])),
        )
    ]


def _sum(host: Price | None, gpu: Price | None) -> Price | None:
    if host is None or gpu is None:
        return None
    return Price(round(host.usd_per_h + gpu.usd_per_h, 6), None, host.source)
