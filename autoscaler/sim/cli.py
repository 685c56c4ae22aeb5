"""`meridian simulate autoscale`: replay a trace under Meridian's policy and its peers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autoscaler.sim import demand_replay, lineup, traces
from meridian_core import replica_model
from meridian_core.shared_data import AZURE_CODE_TRACE
from meridian_core.spec import AutoscalingSpec, SLOSpec, format_validation_error

SLO_GOAL = 0.99
console = Console()
errors = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]{message}[/red]")
    return typer.Exit(2)


def run(
    trace: traces.Trace,
    policies: list[str],
    profile: replica_model.ReplicaProfile,
    autoscaling: AutoscalingSpec,
    slo: SLOSpec,
    warmup_s: float,
    show_progress: bool,
) -> list[demand_replay.DemandReplayResult]:
    """Every setting of every named policy over `trace`, for one region with the spec's
    `autoscaling` and `slo`, its replicas serving by `profile`."""
    lineups = [(name, lineup.contenders(name, trace, profile, autoscaling, slo)) for name in policies]
    total = sum(len(c) for _, c in lineups)
    results: list[demand_replay.DemandReplayResult] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.1f}/{task.total} runs"),
        TimeElapsedColumn(),
        console=errors,
        disable=not show_progress,
    ) as bar:
        task = bar.add_task("simulating", total=total)
        done = 0
        for name, contenders in lineups:
            for contender in contenders:
                bar.update(task, description=f"{name} {contender.setting}")
                config = demand_replay.DemandReplayConfig(
                    profile=profile,
                    slo_ttft_s=slo.ttft_p95_ms / 1000.0,
                    slo_itl_s=slo.itl_p95_ms / 1000.0,
                    min_replicas=autoscaling.min_replicas,
                    max_replicas=autoscaling.max_replicas,
                    initial_replicas=lineup.initial_replicas(contender, trace, profile, autoscaling.min_replicas),
                    warmup_s=warmup_s,
                )
                start = done

                def report(fraction: float, start: int = start) -> None:
                    bar.update(task, completed=start + fraction)

                results.append(demand_replay.simulate(trace, contender.policy, config, contender.setting, report))
                done += 1
    return results


def simulate_autoscale(
    trace: Annotated[Path, typer.Option(help="request trace")] = AZURE_CODE_TRACE,
    trace_format: Annotated[str, typer.Option("--format", help="azure | mooncake")] = "azure",
    scale: Annotated[int, typer.Option(help="superpose K time-shifted copies of the trace", min=1)] = 1,
    slo_ttft_ms: Annotated[float, typer.Option(help="TTFT target, ms", min=1)] = 2000.0,
    slo_itl_ms: Annotated[float, typer.Option(help="inter-token latency target, ms", min=1)] = 200.0,
    policy: Annotated[
        list[str] | None, typer.Option(help=f"repeatable; default all of: {', '.join(lineup.POLICIES)}")
    ] = None,
    profile: Annotated[
        str, typer.Option(help=f"replica profile: {', '.join(replica_model.PROFILES)}")
    ] = replica_model.H100_LLAMA31_8B.name,
    min_replicas: Annotated[int, typer.Option(min=0)] = 1,
    max_replicas: Annotated[int, typer.Option(min=1)] = 512,
    warmup_s: Annotated[float, typer.Option(help="not counted: requests and replica time before this", min=0)] = 600.0,
    plot: Annotated[Path | None, typer.Option(help="PNG: demand and replicas over time, per policy")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Compare Meridian's SLO-aware autoscaler with Ray Serve, SkyServe, Knative KPA and
    static provisioning, each over a sweep of its main knob."""
    names = policy or list(lineup.POLICIES)
    unknown = [n for n in names if n not in lineup.POLICIES]
    if unknown:
        raise _fail(f"unknown policy {', '.join(unknown)}; choose from {', '.join(lineup.POLICIES)}")
    if profile not in replica_model.PROFILES:
        raise _fail(f"unknown profile {profile!r}; choose from {', '.join(replica_model.PROFILES)}")
    if trace_format not in traces.FORMATS:
        raise _fail(f"unknown --format {trace_format!r}; choose from {', '.join(traces.FORMATS)}")
    if min_replicas > max_replicas:
        raise _fail(f"--min-replicas ({min_replicas}) exceeds --max-replicas ({max_replicas})")
    try:
        autoscaling = AutoscalingSpec(min_replicas=min_replicas, max_replicas=max_replicas)
        slo = SLOSpec(ttft_p95_ms=slo_ttft_ms, itl_p95_ms=slo_itl_ms)
    except ValidationError as error:
        raise _fail(f"outside what a spec allows:\n{format_validation_error(error)}") from None
    if not trace.is_file():
        raise _fail(f"no trace at {trace} (pass --trace PATH)")
    try:
        loaded = traces.superpose(traces.load(trace, trace_format), scale)
    except traces.TraceError as error:
        raise _fail(str(error)) from None
    began = time.perf_counter()
    results = run(loaded, names, replica_model.PROFILES[profile], autoscaling, slo, warmup_s, show_progress=not as_json)
    elapsed = time.perf_counter() - began
    best = lineup.best_settings(results, SLO_GOAL)
    if plot is not None:
        from autoscaler.sim.plot import plot_results

        plot_results(
            [best[n] for n in names if n in best],
            plot,
            f"{trace.name} ×{scale}, {profile}, SLO TTFT {slo_ttft_ms:g} ms / ITL {slo_itl_ms:g} ms",
        )
    if as_json:
        payload = {
            "trace": str(trace),
            "scale": scale,
            "requests": len(loaded),
            "profile": profile,
            "elapsed_s": round(elapsed, 2),
            "results": [r.as_dict() for r in results],
            "best": {name: r.as_dict() for name, r in best.items()},
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    table = Table(title=f"{len(loaded)} requests of {trace.name} ×{scale} on {profile} ({elapsed:.1f} s)")
    for column in ("policy", "setting", "SLO attainment", "GPU-hours", "cost $", "max replicas", "TTFT p95 s"):
        table.add_column(column)
    for result in results:
        mark = " ★" if best.get(result.policy) is result else ""
        table.add_row(
            result.policy,
            result.setting + mark,
            f"{result.slo_attainment:.2%}",
            f"{result.gpu_hours:.2f}",
            f"{result.cost_usd:.2f}",
            str(result.max_replicas),
            f"{result.ttft_p95_s:.2f}",
        )
    console.print(table)
    console.print(f"★ cheapest setting reaching {SLO_GOAL:.0%} SLO attainment (else the closest)")
