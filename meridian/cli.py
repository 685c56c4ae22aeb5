"""The `meridian` command line: up, status, down, models pull, serve-config."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from autoscaler.sim.cli import simulate_autoscale
from capacity.catalog import Catalog
from capacity.cli import capacity_app, simulate_capacity
from capacity.live.ledger import Ledger, fleet_ledger
from capacity.live.providers import catalog_for
from capacity.live.report import report_rows
from meridian import demo, launcher
from meridian.kubernetes.objects import RenderError
from meridian.kubernetes.render import manifests, to_yaml
from meridian.serve_config import serve_config
from meridian.status import collect_status
from meridian_core.cluster_spec import ENV_VAR
from meridian_core.replica_model import PROFILES
from meridian_core.shared_data import MOONCAKE_TRACE
from meridian_core.spec import SpecError, load_spec
from meridian_host import models
from meridian_host.platform_state import PlatformState, cluster_dir

DEFAULT_SPEC = Path("configs/local.yaml")

app = typer.Typer(help="Meridian: one OpenAI-compatible endpoint over many regions.", no_args_is_help=True)
models_app = typer.Typer(help="Model weights named in a spec.", no_args_is_help=True)
app.add_typer(models_app, name="models")
simulate_app = typer.Typer(help="Replay traces against simulated regions.", no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")
simulate_app.command("autoscale")(simulate_autoscale)
simulate_app.command("capacity")(simulate_capacity)
app.add_typer(capacity_app, name="capacity")
render_app = typer.Typer(help="Render the platform for other runtimes.", no_args_is_help=True)
app.add_typer(render_app, name="render")
console = Console()
errors = Console(stderr=True)

SpecArg = Annotated[Path, typer.Argument(help="platform spec (YAML)")]


def _load(spec_path: Path):  # type: ignore[no-untyped-def]
    try:
        return load_spec(spec_path)
    except SpecError as error:
        errors.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None


@app.command()
def up(
    spec: SpecArg = DEFAULT_SPEC,
    timeout: Annotated[float, typer.Option(help="seconds to wait for every region to be ready")] = 900.0,
) -> None:
    """Start Ray, one node per region, the region apps and the geo router; wait until ready."""
    platform = _load(spec)
    table_for = _progress_table
    with Live(table_for([]), console=console, refresh_per_second=4, transient=False) as live:
        try:
            state, already_up = launcher.up(
                spec,
                on_step=lambda message: live.console.print(f"[cyan]•[/cyan] {message}"),
                on_regions=lambda progress: live.update(table_for(progress)),
                timeout_s=timeout,
            )
        except (launcher.LaunchError, models.ModelError) as error:
            errors.print(f"[red]meridian up failed:[/red] {error}")
            raise typer.Exit(1) from None
    verb = "was already up" if already_up else "is up"
    model = platform.models[0].id
    console.print(f"\n[green]Meridian {verb}.[/green] OpenAI endpoint: [bold]{state.router_url}/v1[/bold]\n")
    for name, reason in state.failed_regions.items():
        errors.print(f"[red]{name} is left out:[/red] {reason}")
    messages = [{"role": "system", "content": demo.SYSTEM}, {"role": "user", "content": demo.QUESTION}]
    body = json.dumps({"model": model, "messages": messages, "temperature": 0})
    console.print("Try it:\n")
    console.print(
        f"curl {state.router_url}/v1/chat/completions -H 'Content-Type: application/json' "
        f"-H 'X-Client-Location: 48.85,2.35' -d '{body}'\n",
        soft_wrap=True,
        markup=False,
    )
    console.print(
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{state.router_url}/v1", api_key="unused")\n'
        f'answer = client.chat.completions.create(model="{model}", messages={messages!r}, temperature=0)\n'
        "print(answer.choices[0].message.content)",
        soft_wrap=True,
        markup=False,
    )


def _progress_table(progress: list[launcher.RegionProgress]) -> Table:
    table = Table(title="regions", expand=False)
    table.add_column("region")
    table.add_column("phase")
    table.add_column("detail", overflow="fold")
    colours = {"ready": "green", "failed": "red", "left out": "red", "deploying": "yellow"}
    for item in progress:
        colour = colours.get(item.phase, "white")
        table.add_row(item.name, f"[{colour}]{item.phase}[/{colour}]", item.detail)
    return table


@app.command()
def status(
    spec: SpecArg = DEFAULT_SPEC,
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Regions, replicas, health and load, and the router's address."""
    platform = _load(spec)
    report = collect_status(platform, PlatformState.load(platform.name))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if not report["running"]:
        console.print(f"[yellow]platform {platform.name} is not running[/yellow] (start it with `meridian up {spec}`)")
        raise typer.Exit(1)
    console.print(f"router: [bold]{report['router_url']}[/bold]")
    table = Table(title=f"platform {platform.name}")
    for column in ("region", "cluster", "nodes", "app, replicas", "target (reason)", "run+wait", "KV", "in-flight"):
        table.add_column(column, no_wrap=column in ("region", "cluster"))
    for region in report["regions"]:
        replicas = ", ".join(f"{n} {s.lower()}" for s, n in region["replica_states"].items()) or "none"
        app_status = region["app_status"].lower().replace("_", " ")
        health = "" if region["healthy"] else f"[red]down[/red] {region['left_out'] or region['last_error'] or ''}; "
        engine = region["engine"]
        scaling, floor = region["autoscaling"], region["floor"]
        target = f"{scaling['target']} ({scaling['reason']})" if scaling else "fixed"
        if floor:
            target += f"; floor {floor['replicas']} ({floor['reason']})"
        table.add_row(
            region["name"],
            region["cluster"] or "-",
            ", ".join(f"{n} {kind.replace('_', '-')}" for kind, n in region["nodes"].items()) or "-",
            f"{health}{app_status}: {replicas}",
            target,
            f"{engine['running']}+{engine['waiting']}" if engine else "-",
            f"{engine['kv_cache_usage']:.0%}" if engine else "-",
            str(region["in_flight"]),
        )
    console.print(table)


@capacity_app.command("report")
def capacity_report(
    spec: SpecArg = DEFAULT_SPEC,
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Held nodes, cost, utilisation, last hour's stockouts, preemptions and failed joins, quota left."""
    platform = _load(spec)
    now = time.time()
    ledgers = [Ledger(cluster_dir(platform.name, region.slug)) for region in platform.regions]
    snapshot, events = fleet_ledger(ledgers, since_s=now - 3600)
    if snapshot is None:
        errors.print(
            f"[yellow]no capacity recorded for platform {platform.name}[/yellow] (start it with `meridian up`)"
        )
        raise typer.Exit(1)
    catalog = Catalog(o for region in platform.regions for o in catalog_for(platform, region).offerings())
    rows = report_rows(snapshot, events, catalog, platform.capacity, now)
    skipped = sum(ledger.skipped_lines for ledger in ledgers)  # lines of the event logs it could not read
    if as_json:
        report = {"platform": platform.name, "at_s": snapshot.at_s, "rows": rows, "skipped_event_lines": skipped}
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title=f"capacity of {platform.name}, {now - snapshot.at_s:.0f} s ago")
    columns = ("cloud", "region", "kind", "nodes od+spot", "accel.", "$/h", "$/day", "util.")
    for column in (*columns, "stockout+ preempt+ no-join 1h", "quota left"):
        table.add_column(column, no_wrap=column in ("cloud", "region"), min_width=len(column.split()[0]))
    for row in rows:
        table.add_row(
            row["cloud"],
            row["region"],
            row["accelerator"],
            f"{row['nodes']['on_demand']}+{row['nodes']['spot']}",
            str(row["gpus"]),
            f"{row['usd_per_hour']:.2f}",
            f"{row['projected_usd_per_day']:.2f}",
            "-" if row["utilisation"] is None else f"{row['utilisation']:.0%}",
            f"{row['stockouts_1h']}+{row['preemptions_1h']}+{row['failed_joins_1h']}",
            "-" if row["quota_headroom"] is None else str(row["quota_headroom"]),
        )
    console.print(table)
    if skipped:
        errors.print(f"[yellow]{skipped} unreadable event line(s) skipped[/yellow]")


@app.command()
def down(spec: SpecArg = DEFAULT_SPEC) -> None:
    """Stop everything `up` started; leaves no process behind."""
    platform = _load(spec)
    if PlatformState.load(platform.name) is None:
        console.print(f"platform {platform.name} is not running")
        return
    with console.status(f"stopping platform {platform.name}"):
        stopped = launcher.down(platform.name)
    swept = f" ({stopped.strays} stray processes swept)" if stopped.strays else ""
    console.print(f"[green]platform {platform.name} stopped[/green]{swept}")
    for problem in stopped.problems:
        errors.print(f"[red]{problem}[/red]")
    if stopped.problems:
        raise typer.Exit(1)


@app.command("serve-config")
def serve_config_command(
    spec: SpecArg = DEFAULT_SPEC,
    region: Annotated[str | None, typer.Option(help="the region whose cluster it is for (needed with several)")] = None,
    token_env: Annotated[
        str | None,
        typer.Option(help="the variable in its pods' environment holding the region's token; unset: it is open"),
    ] = None,
) -> None:
    """Print the Ray Serve config (`serve deploy` schema) of one region's cluster."""
    platform = _load(spec)
    if region is None and len(platform.regions) > 1:
        names = ", ".join(r.name for r in platform.regions)
        errors.print(f"[red]each region is its own cluster; name one with --region ({names})[/red]")
        raise typer.Exit(2)
    try:
        chosen = platform.region(region) if region else platform.regions[0]
    except KeyError:
        errors.print(f"[red]no region {region!r} in {platform.name}[/red]")
        raise typer.Exit(2) from None
    if token_env is not None and not re.fullmatch(ENV_VAR, token_env):
        errors.print(f"[red]--token-env: {token_env!r} is not a variable name ({ENV_VAR})[/red]")
        raise typer.Exit(2)
    config = serve_config(platform, chosen, control_token_env=token_env)
    typer.echo(yaml.safe_dump(config, sort_keys=False), nl=False)


@render_app.command("kubernetes")
def render_kubernetes(
    spec: SpecArg = DEFAULT_SPEC,
    out: Annotated[Path, typer.Option(help="folder the manifests are written to")] = Path("kubernetes"),
    image: Annotated[str | None, typer.Option(help="the image every pod runs; unset: kubernetes.image")] = None,
) -> None:
    """Write the platform's Kubernetes manifests to OUT: one KubeRay RayService per region,
    the router, the global loop and a kustomization. The same spec gives the same bytes."""
    platform = _load(spec)
    try:
        files = manifests(platform, image)
    except RenderError as error:
        errors.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    for name, objects in files.items():
        (out / name).write_text(to_yaml(objects))
        console.print(f"wrote {out / name}")


@models_app.command("pull")
def models_pull(spec: SpecArg = DEFAULT_SPEC) -> None:
    """Fetch and convert every model the spec names; a no-op for those already cached."""
    for model in _load(spec).models:
        if models.is_pulled(model.source):
            console.print(f"[green]✓[/green] {model.id}: {models.resolve(model.source)} (cached)")
            continue
        with console.status(f"pulling {model.id}") as spinner:
            try:
                path = models.pull(
                    model.source, progress=lambda message, name=model.id: spinner.update(f"{name}: {message}")
                )
            except models.ModelError as error:
                errors.print(f"[red]{model.id}: {error}[/red]")
                raise typer.Exit(1) from None
        console.print(f"[green]✓[/green] {model.id}: {path}")


@simulate_app.command("routing")
def simulate_routing(
    trace: Annotated[Path, typer.Option(help="Mooncake-format JSONL trace")] = MOONCAKE_TRACE,
    regions: Annotated[
        Path, typer.Option(help="spec whose regions (with their profiles) and router.scoring are simulated")
    ] = Path("configs/sim-global.yaml"),
    profile: Annotated[
        str | None,
        typer.Option(
            help=f"replica profile every region's replicas serve by ({', '.join(PROFILES)}); "
            "default: each region's own `profile` in the spec"
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="replay only the first N requests")] = None,
    cache_blocks: Annotated[int, typer.Option(help="prefix blocks each replica caches")] = 2000,
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Compare nearest, least-load, prefix-aware-in-region and Meridian's scorer on a trace."""
    from geo_router.sim import routing_replay

    platform = _load(regions)
    if profile is not None and profile not in PROFILES:
        errors.print(f"[red]unknown profile {profile!r}[/red]; choose from {', '.join(PROFILES)}")
        raise typer.Exit(2)
    if not trace.is_file():
        errors.print(f"[red]no trace at {trace}[/red] (pass --trace PATH)")
        raise typer.Exit(2)
    sim_regions = [
        routing_replay.SimRegion(r.name, r.location.latlon, r.replicas, PROFILES[profile or r.profile])
        for r in platform.regions
    ]
    with console.status(f"replaying {trace.name}"):
        requests = routing_replay.load_mooncake(trace, limit)
        results = routing_replay.compare_policies(requests, sim_regions, cache_blocks, platform.router.scoring)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
        return
    served_by = ", ".join(sorted({r.profile.name for r in sim_regions}))
    table = Table(title=f"{len(requests)} requests of {trace.name} over {len(sim_regions)} regions of {served_by}")
    for column in ("policy", "TTFT mean ms", "TTFT p99 ms", "cache hit rate", "spill rate", "mean RTT ms"):
        table.add_column(column)
    for result in results:
        row = result.as_dict()
        table.add_row(
            result.policy,
            f"{row['ttft_mean_ms']:.0f}",
            f"{row['ttft_p99_ms']:.0f}",
            f"{row['cache_hit_rate']:.1%}",
            f"{row['spill_rate']:.1%}",
            f"{row['mean_rtt_ms']:.0f}",
        )
    console.print(table)
