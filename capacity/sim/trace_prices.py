"""Prices for the zones of a spot trace set, per step, and the catalog the live policy sees.

The traces name an instance kind (`v100_1`, `k80_8`, `intel_64`, `c3-88`) that the GPU
catalog extract does not carry (it has no V100, K80, r5 or c3 rows), so the kinds map to
the instance types the traces were collected on, priced as follows, first match wins:

- **spot**, per zone and step: the trace file's `prices`; else `--spot-price`; else the
  catalog's spot price for that type in that region; else `DEFAULT_SPOT_FRACTION` of the
  on-demand price.
- **on-demand**, per zone: `--on-demand-price`; else the catalog's on-demand price for
  that type in that region; else the public list price in `TRACE_KINDS`.

`DEFAULT_SPOT_FRACTION` = 0.30 is the ratio of the spot price recorded in the p3.2xlarge
preemption traces (0.918 USD/h, constant in every file that has prices) to the
p3.2xlarge on-demand list price (3.06 USD/h); it is an assumption for the files without
prices, stated in the results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capacity.catalog import Catalog, Offering
from capacity.model import Accelerator, Market, Placement
from capacity.sim.spot_traces import TraceSet

DEFAULT_SPOT_FRACTION = 0.30


@dataclass(frozen=True)
class TraceKind:
    instance_type: str
    accelerator: Accelerator
    on_demand_usd_per_h: float
    source: str


# On-demand list prices (USD/h, Linux) in the trace's regions (us-east-1/2, us-west-2; us-central1).
TRACE_KINDS: dict[str, TraceKind] = {
    "v100_1": TraceKind("p3.2xlarge", Accelerator("V100", 1, 16), 3.06, "AWS on-demand list price"),
    "v100_8": TraceKind("p3.16xlarge", Accelerator("V100", 8, 16), 24.48, "AWS on-demand list price"),
    "k80_1": TraceKind("p2.xlarge", Accelerator("K80", 1, 12), 0.90, "AWS on-demand list price"),
    "k80_8": TraceKind("p2.8xlarge", Accelerator("K80", 8, 12), 7.20, "AWS on-demand list price"),
    "intel_64": TraceKind("r5.16xlarge", Accelerator("cpu", 0, 0), 4.032, "AWS on-demand list price"),
    # 88 vCPU × 0.03398 + 176 GiB × 0.00455 (GCP C3 us-central1 list rates), rounded.
    "c3-88": TraceKind("c3-highcpu-88", Accelerator("cpu", 0, 0), 3.79, "GCP C3 list rates, computed"),
}


class PricingError(ValueError):
    """A trace set whose prices cannot be determined."""


@dataclass(frozen=True)
class ZonePrices:
    instance_type: str
    accelerator: Accelerator
    on_demand: np.ndarray  # USD/h per zone
    spot: np.ndarray  # USD/h, shape (zones, steps)
    notes: tuple[str, ...]  # where each price came from, for the results file


def zone_prices(
    traces: TraceSet,
    catalog: Catalog | None = None,
    *,
    on_demand_usd_per_h: float | None = None,
    spot_usd_per_h: float | None = None,
) -> ZonePrices:
    kind = TRACE_KINDS.get(traces.kind)
    if kind is None and on_demand_usd_per_h is None:
        raise PricingError(f"{traces.name}: unknown instance kind {traces.kind!r}; pass --on-demand-price")
    instance_type = kind.instance_type if kind is not None else traces.kind
    accelerator = kind.accelerator if kind is not None else Accelerator(traces.kind, 1, 0)
    on_demand = np.empty(len(traces.zones))
    spot = np.empty((len(traces.zones), traces.steps))
    notes: list[str] = []
    for i, zone in enumerate(traces.zones):
        listed = (
            catalog.for_placement(Placement(zone.cloud, zone.region, zone.zone, instance_type, Market.SPOT))
            if catalog is not None
            else None
        )
        od, od_note = _on_demand(kind, listed, on_demand_usd_per_h)
        on_demand[i] = od
        if zone.prices is not None:
            spot[i] = zone.prices
            spot_note = "trace prices"
        elif spot_usd_per_h is not None:
            spot[i] = spot_usd_per_h
            spot_note = "--spot-price"
        elif listed is not None and listed.spot is not None:
            spot[i] = listed.spot.usd_per_h
            spot_note = f"catalog ({listed.spot.source})"
        else:
            spot[i] = DEFAULT_SPOT_FRACTION * od
            spot_note = f"{DEFAULT_SPOT_FRACTION:.2f} × on-demand (assumed)"
        notes.append(f"{zone.zone}: {instance_type} on-demand {od:g} USD/h ({od_note}); spot {spot_note}")
    return ZonePrices(instance_type, accelerator, on_demand, spot, tuple(notes))


def _on_demand(kind: TraceKind | None, listed: Offering | None, given: float | None) -> tuple[float, str]:
    if given is not None:
        return given, "--on-demand-price"
    if listed is not None and listed.on_demand is not None:
        return listed.on_demand.usd_per_h, f"catalog ({listed.on_demand.source})"
    assert kind is not None
    return kind.on_demand_usd_per_h, kind.source
