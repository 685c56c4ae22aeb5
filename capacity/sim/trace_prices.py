"""Prices for the zones of a spot trace set, per step, and the catalog the live policy sees.

The traces name an instance kind (`v100_1`, `k80_8`, `intel_64`, `c3-88`) that the GPU
catalog extract does not carry (it has no V100, K80, r5 or c3 rows), so the kinds map to
the instance types the traces were collected on, priced as follows, first match wins:

- **spot**, per zone and step: the trace file's `prices`; else `--spot-price`; else the
  catalog's spot price for that type in that region; else `DEFAULT_SPOT_FRACTION` of the
  on-demand price.
- **on-demand**, per zone: `--on-demand-price`; else the catalog's on-demand price for
  that type in that region; else its price in the catalog's nearest listing.

The instance type comes from the trace set's kind. A GPU kind, in the artifacts'
convention `<accelerator>[_<memory>gb]_<count>` (`v100_1`, `a100_40gb_8`), is looked up
in the catalog: the cloud's type with that many of that accelerator (of that memory, when
named), preferring one listed in the trace's regions, then the smallest. The CPU kinds
of the artifacts are named by their files, not by a convention, and listed in `CPU_KINDS`.

`DEFAULT_SPOT_FRACTION` = 0.30 is the ratio of the spot price recorded in the p3.2xlarge
preemption traces (0.918 USD/h, constant in every file that has prices) to the
p3.2xlarge on-demand list price (3.06 USD/h); it is an assumption for the files without
prices, stated in the results.
"""

from __future__ import annotations

import re
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


# The CPU kinds of the public spot traces, with their on-demand list prices (USD/h,
# Linux) in the traces' regions; the GPU catalog lists no CPU types.
CPU_KINDS: dict[str, TraceKind] = {
    "intel_64": TraceKind("r5.16xlarge", Accelerator("cpu", 0, 0), 4.032, "AWS on-demand list price"),
    # 88 vCPU × 0.03398 + 176 GiB × 0.00455 (GCP C3 us-central1 list rates), rounded.
    "c3-88": TraceKind("c3-highcpu-88", Accelerator("cpu", 0, 0), 3.79, "GCP C3 list rates, computed"),
}
GPU_KIND = re.compile(r"^(?P<accelerator>[a-z][a-z0-9]*?)(?:_(?P<memory>\d+)gb)?_(?P<count>\d+)$")


class PricingError(ValueError):
    """A trace set whose prices cannot be determined."""


def trace_kind(traces: TraceSet, catalog: Catalog) -> TraceKind:
    """The instance type a trace set's kind names, and its on-demand price."""
    if traces.kind in CPU_KINDS:
        return CPU_KINDS[traces.kind]
    named = GPU_KIND.match(traces.kind)
    if named is None:
        raise PricingError(
            f"{traces.name}: kind {traces.kind!r} is neither <accelerator>[_<memory>gb]_<count> nor one of "
            f"the CPU kinds {sorted(CPU_KINDS)}"
        )
    cloud = traces.zones[0].cloud
    wanted, memory, count = named["accelerator"], named["memory"], int(named["count"])
    found = [
        o
        for o in catalog.offerings(cloud=cloud, accelerator_count=count)
        if o.accelerator is not None
        and o.on_demand is not None
        and o.accelerator.name.split("-")[0].lower() == wanted
        and (memory is None or o.accelerator.memory_gib == float(memory))
    ]
    if not found:
        described = f"{count}× {wanted.upper()}" + (f" {memory} GB" if memory else "")
        raise PricingError(f"{traces.name}: the catalog has no {cloud} type with {described}; pass --on-demand-price")
    regions = {zone.region for zone in traces.zones}
    chosen = min(found, key=lambda o: (o.region not in regions, o.vcpus, o.on_demand.usd_per_h, o.instance_type))
    assert chosen.accelerator is not None and chosen.on_demand is not None
    price = chosen.on_demand
    return TraceKind(chosen.instance_type, chosen.accelerator, price.usd_per_h, f"{price.source}, {chosen.region}")


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
    try:
        kind: TraceKind | None = trace_kind(traces, catalog) if catalog is not None else CPU_KINDS.get(traces.kind)
    except PricingError:
        if on_demand_usd_per_h is None:
            raise
        kind = None
    if kind is None and on_demand_usd_per_h is None:
        raise PricingError(f"{traces.name}: kind {traces.kind!r} needs a catalog or --on-demand-price")
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
