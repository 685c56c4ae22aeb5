"""`meridian capacity catalog` and `meridian simulate capacity` (wired into meridian/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from capacity.catalog import Offering, default_catalog
from capacity.model import Market
from capacity.sim.spot_replay import POLICIES, PREEMPTION_NOTICE_S, SpotReplayConfig, SpotReplayResult, compare
from capacity.sim.spot_traces import TraceError, TraceSet, load_sets
from capacity.sim.trace_prices import PricingError, ZonePrices, zone_prices
from meridian_core.capacity_spec import CapacitySpec
from meridian_core.shared_data import SPOT_TRACES_DIR

capacity_app = typer.Typer(help="Cloud capacity: catalog, placement.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


def _offering_row(offering: Offering) -> dict[str, object]:
    acc = offering.accelerator
    return {
        "cloud": offering.cloud,
        "region": offering.region,
        "zone": offering.zone,
        "instance_type": offering.instance_type,
        "accelerator": acc.name if acc else None,
        "accelerator_count": acc.count if acc else 0,
        "accelerator_memory_gib": acc.memory_gib if acc else 0,
        "vcpus": offering.vcpus,
        "memory_gib": offering.memory_gib,
        "on_demand_usd_per_h": offering.on_demand.usd_per_h if offering.on_demand else None,
        "spot_usd_per_h": offering.spot.usd_per_h if offering.spot else None,
        "on_demand_refreshed_at_s": offering.on_demand.refreshed_at_s if offering.on_demand else None,
        "spot_refreshed_at_s": offering.spot.refreshed_at_s if offering.spot else None,
        "source": (offering.spot or offering.on_demand).source if (offering.spot or offering.on_demand) else None,
    }


@capacity_app.command("catalog")
def catalog_command(
    accelerator: Annotated[str | None, typer.Option(help="only this accelerator, e.g. A100, H100, L4")] = None,
    count: Annotated[int | None, typer.Option(min=1, help="only nodes with this many accelerators")] = None,
    cloud: Annotated[str | None, typer.Option(help="only this cloud: aws or gcp")] = None,
    market: Annotated[Market, typer.Option(help="rank regions by this market's price")] = Market.SPOT,
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """The cheapest offering in each region (list prices from the packaged catalog extract)."""
    catalog = default_catalog()
    rows = catalog.cheapest_by_region(market, accelerator=accelerator, accelerator_count=count, cloud=cloud)
    if not rows:
        known = sorted({o.accelerator.name for o in catalog.offerings() if o.accelerator is not None})
        errors.print(
            f"[red]no {market} offering matches[/red] accelerator={accelerator} count={count} cloud={cloud}; "
            f"accelerators in the catalog: {', '.join(known)}"
        )
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps([_offering_row(o) for o in rows], indent=2))
        return
    table = Table(title=f"cheapest {market} offering per region" + (f" ({accelerator})" if accelerator else ""))
    for column in (
        "cloud",
        "region",
        "zone",
        "instance type",
        "accelerators",
        "vCPU",
        "RAM GiB",
        "on-demand $/h",
        "spot $/h",
        "refreshed",
    ):
        table.add_column(column)
    for o in rows:
        acc = (
            f"{o.accelerator.count}× {o.accelerator.name} ({o.accelerator.memory_gib:g} GiB)" if o.accelerator else "-"
        )
        price = o.spot or o.on_demand
        refreshed = (
            "list-price snapshot" if price is None or price.refreshed_at_s is None else f"{price.refreshed_at_s:.0f}"
        )
        table.add_row(
            o.cloud,
            o.region,
            o.zone,
            o.instance_type,
            acc,
            f"{o.vcpus:g}",
            f"{o.memory_gib:g}",
            f"{o.on_demand.usd_per_h:.4f}" if o.on_demand else "-",
            f"{o.spot.usd_per_h:.4f}" if o.spot else "-",
            refreshed,
        )
    console.print(table)


def simulate_capacity(
    spot_traces: Annotated[
        list[Path] | None,
        typer.Option(help="trace files or folders (a folder's *.json; sets are grouped by folder and kind)"),
    ] = None,
    more_traces: Annotated[list[Path] | None, typer.Argument(help="more trace files (after --spot-traces)")] = None,
    target: Annotated[int, typer.Option(min=1, help="replicas that must be serving")] = 4,
    policy: Annotated[list[str] | None, typer.Option(help=f"policies to compare: {', '.join(POLICIES)}")] = None,
    spot_delay_s: Annotated[float, typer.Option(min=0, help="spot provisioning delay, seconds")] = 120.0,
    on_demand_delay_s: Annotated[float, typer.Option(min=0, help="on-demand provisioning delay, seconds")] = 120.0,
    drain_s: Annotated[float, typer.Option(min=0, help="billed time to drain a released running node")] = 30.0,
    overprovision: Annotated[int, typer.Option(min=0, help="SpotHedge's extra spot replicas")] = 1,
    on_demand_price: Annotated[float | None, typer.Option(min=0, help="on-demand USD/h for every zone")] = None,
    spot_price: Annotated[float | None, typer.Option(min=0, help="spot USD/h where a trace has no prices")] = None,
    notices: Annotated[
        bool,
        typer.Option(
            help="warn of each preemption as the cloud does (AWS 120 s, GCP 30 s ahead); "
            "--no-notices takes every node at the sample that shows its loss"
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Replay spot availability traces under capacity policies: availability, cost, preemptions."""
    paths = [*(spot_traces or []), *(more_traces or [])] or [SPOT_TRACES_DIR]
    names = policy or list(POLICIES)
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        errors.print(f"[red]unknown policy {unknown[0]!r}[/red]; choose from {', '.join(POLICIES)}")
        raise typer.Exit(2)
    try:
        sets = load_sets(paths)
        catalog = default_catalog()
        priced = [
            (s, zone_prices(s, catalog, on_demand_usd_per_h=on_demand_price, spot_usd_per_h=spot_price)) for s in sets
        ]
    except (TraceError, PricingError) as error:
        errors.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    config = SpotReplayConfig(
        target,
        spot_delay_s,
        on_demand_delay_s,
        drain_s,
        overprovision,
        notice_s=dict(PREEMPTION_NOTICE_S) if notices else {},
    )
    report = []
    runs = len(priced) * len(dict.fromkeys(["on_demand", *names]))
    with Progress(console=errors, transient=True, disable=as_json) as progress:
        task = progress.add_task("simulating", total=runs)
        for traces, prices in priced:
            progress.update(task, description=traces.name)
            results = compare(traces, prices, config, CapacitySpec(), names, on_done=lambda _: progress.advance(task))
            report.append(_set_report(traces, prices, config, results))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for entry in report:
        table = Table(
            title=f"{entry['set']}: {len(entry['zones'])} zones × {entry['steps']} steps of {entry['gap_s']:g} s, "
            f"target {target}, {_notices_text(config)}"
        )
        for column in ("policy", "availability", "cost USD", "savings vs on-demand", "preemptions", "stockouts"):
            table.add_column(column)
        for r in entry["results"]:
            table.add_row(
                r["policy"],
                f"{r['availability']:.4%}",
                f"{r['cost_usd']:.2f}",
                f"{r['savings_vs_ondemand']:.1%}",
                str(r["preemptions"]),
                str(r["stockouts"]),
            )
        console.print(table)


def _notices_text(config: SpotReplayConfig) -> str:
    if not config.notice_s:
        return "no preemption notices"
    return "notices " + ", ".join(f"{cloud.upper()} {seconds:g} s" for cloud, seconds in config.notice_s.items())


def _set_report(
    traces: TraceSet, prices: ZonePrices, config: SpotReplayConfig, results: list[SpotReplayResult]
) -> dict[str, object]:
    return {
        "set": traces.name,
        "gap_s": traces.gap_s,
        "steps": traces.steps,
        "zones": [z.zone for z in traces.zones],
        "target": config.target,
        "notice_s": dict(config.notice_s),
        "pricing": list(prices.notes),
        "results": [r.as_dict() for r in results],
    }
