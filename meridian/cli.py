"""The `meridian` command line: up, status, down, models pull, serve-config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from meridian import launcher, models
from meridian.platform_state import PlatformState
from meridian.serve_config import serve_config
from meridian.spec import SpecError, load_spec
from meridian.status import collect_status

DEFAULT_SPEC = Path("configs/local.yaml")

app = typer.Typer(help="Meridian: one OpenAI-compatible endpoint over many regions.", no_args_is_help=True)
models_app = typer.Typer(help="Model weights named in a spec.", no_args_is_help=True)
app.add_typer(models_app, name="models")
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
    console.print("Try it:\n")
    console.print(
        f"curl {state.router_url}/v1/chat/completions -H 'Content-Type: application/json' "
        f"-H 'X-Client-Location: 48.85,2.35' "
        f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]}}'\n",
        soft_wrap=True,
        markup=False,
    )
    console.print(
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{state.router_url}/v1", api_key="unused")\n'
        f'answer = client.chat.completions.create(model="{model}", '
        'messages=[{"role": "user", "content": "What is the capital of France?"}])\n'
        "print(answer.choices[0].message.content)",
        soft_wrap=True,
        markup=False,
    )


def _progress_table(progress: list[launcher.RegionProgress]) -> Table:
    table = Table(title="regions", expand=False)
    table.add_column("region")
    table.add_column("phase")
    table.add_column("detail", overflow="fold")
    colours = {"ready": "green", "failed": "red", "deploying": "yellow"}
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
    console.print(f"router: [bold]{report['router_url']}[/bold]   dashboard: {report['dashboard_url']}")
    table = Table(title=f"platform {platform.name}")
    for column in ("region", "health", "app", "replicas", "running", "waiting", "KV cache", "router in-flight"):
        table.add_column(column)
    for region in report["regions"]:
        replicas = ", ".join(f"{n} {s.lower()}" for s, n in region["replica_states"].items()) or "-"
        healthy = "[green]healthy[/green]" if region["healthy"] else f"[red]down[/red] {region['last_error'] or ''}"
        engine = region["engine"]
        table.add_row(
            region["name"],
            healthy,
            region["app_status"].lower(),
            replicas,
            str(engine.get("running", "-")),
            str(engine.get("waiting", "-")),
            f"{engine['kv_cache_usage']:.0%}" if "kv_cache_usage" in engine else "-",
            str(region["in_flight"]),
        )
    console.print(table)


@app.command()
def down(spec: SpecArg = DEFAULT_SPEC) -> None:
    """Stop everything `up` started; leaves no process behind."""
    platform = _load(spec)
    if PlatformState.load(platform.name) is None:
        console.print(f"platform {platform.name} is not running")
        return
    with console.status(f"stopping platform {platform.name}"):
        strays = launcher.down(platform.name)
    console.print(f"[green]platform {platform.name} stopped[/green]" + (f" ({strays} stray processes swept)" if strays else ""))


@app.command("serve-config")
def serve_config_command(spec: SpecArg = DEFAULT_SPEC) -> None:
    """Print the Ray Serve config (`serve deploy` schema) for a spec."""
    typer.echo(yaml.safe_dump(serve_config(_load(spec)), sort_keys=False), nl=False)


@models_app.command("pull")
def models_pull(spec: SpecArg = DEFAULT_SPEC) -> None:
    """Fetch and convert every model the spec names; a no-op for those already cached."""
    for model in _load(spec).models:
        if models.is_pulled(model.source):
            console.print(f"[green]✓[/green] {model.id}: {models.resolve(model.source)} (cached)")
            continue
        with console.status(f"pulling {model.id}") as spinner:
            try:
                path = models.pull(model.source, progress=lambda message: spinner.update(f"{model.id}: {message}"))
            except models.ModelError as error:
                errors.print(f"[red]{model.id}: {error}[/red]")
                raise typer.Exit(1) from None
        console.print(f"[green]✓[/green] {model.id}: {path}")
