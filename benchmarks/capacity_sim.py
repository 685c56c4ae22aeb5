"""Replay every spot trace set in shared/data/spot under the five capacity policies; write capacity.md.

    .venv/bin/python -m benchmarks.capacity_sim [--target 4] [--out benchmarks/results/capacity.md]

The same code as `meridian simulate capacity --spot-traces <set folder> --target 4 --json`
(capacity.sim.spot_replay.compare with the default SpotReplayConfig and CapacitySpec), run over each
set, plus Meridian with larger spot spares on the largest set to show the cost of more
availability. Fixed target for every set; nothing is tuned per set.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from capacity.catalog import default_catalog
from capacity.sim.spot_replay import POLICIES, SpotReplayConfig, SpotReplayResult, compare
from capacity.sim.spot_traces import TraceSet, load_sets
from capacity.sim.trace_prices import DEFAULT_SPOT_FRACTION, zone_prices
from meridian_core.capacity_spec import CapacitySpec
from meridian_core.shared_data import SPOT_TRACES_DIR

OUT = Path(__file__).resolve().parent / "results" / "capacity.md"
SPARE_SWEEP_SET = "aws-02-15-2023/v100_1"


def goal(results: dict[str, SpotReplayResult]) -> tuple[bool, bool, bool]:
    meridian, spothedge = results["meridian"], results["spothedge"]
    beats = meridian.savings_vs_ondemand > spothedge.savings_vs_ondemand and (
        meridian.availability >= spothedge.availability
    )
    return meridian.availability >= 0.999, meridian.savings_vs_ondemand >= 0.5, beats


def verdict(checks: dict[str, tuple[bool, bool, bool]]) -> list[str]:
    n = len(checks)
    parts = []
    for index, label in enumerate(("reaches 99.9% availability", "saves at least 50%", "beats SpotHedge")):
        hits = [name for name, flags in checks.items() if flags[index]]
        parts.append(f"- Meridian {label} on **{len(hits)} of {n}** sets" + (f": {', '.join(hits)}." if hits else "."))
    all_met = [name for name, flags in checks.items() if all(flags)]
    parts.append(
        f"- The whole goal holds on {len(all_met)} of {n} sets" + (f": {', '.join(all_met)}." if all_met else ".")
    )
    return [*parts, ""]


def table(rows: list[SpotReplayResult]) -> list[str]:
    lines = [
        "| policy | availability | cost USD | savings vs on-demand | preemptions | stockouts "
        "| spot node-h | on-demand node-h |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"**{r.policy}**" if r.policy == "meridian" else r.policy
        lines.append(
            f"| {name} | {r.availability:.4%} | {r.cost_usd:,.2f} | {r.savings_vs_ondemand:.1%} | {r.preemptions} "
            f"| {r.stockouts} | {r.spot_node_hours:,.0f} | {r.on_demand_node_hours:,.0f} |"
        )
    return lines


def describe(traces: TraceSet) -> str:
    zones = ", ".join(z.zone for z in traces.zones)
    kind = "0/1 (1 = available, no stated limit)" if traces.binary else "counts of obtainable spot instances"
    days = traces.steps * traces.gap_s / 86400
    return (
        f"{len(traces.zones)} zones ({zones}); {traces.steps:,} steps of {traces.gap_s:g} s ({days:.1f} days); {kind}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", type=int, default=4)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not SPOT_TRACES_DIR.is_dir():
        raise SystemExit(f"no spot traces at {SPOT_TRACES_DIR}")
    config = SpotReplayConfig(target=args.target)
    catalog = default_catalog()
    started = time.perf_counter()
    sections: list[str] = []
    summary = [
        "| set | meridian availability | meridian savings | SpotHedge availability | SpotHedge savings "
        "| ≥ 99.9% | ≥ 50% savings | beats SpotHedge |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sweep: list[str] = []
    checks: dict[str, tuple[bool, bool, bool]] = {}
    multi_zone_steps = 0
    for traces in sorted(load_sets([SPOT_TRACES_DIR]), key=lambda t: t.name):
        prices = zone_prices(traces, catalog)
        t0 = time.perf_counter()
        rows = compare(traces, prices, config, CapacitySpec(), POLICIES)
        seconds = time.perf_counter() - t0
        by = {r.policy: r for r in rows}
        three_nines, half, beats = goal(by)
        checks[traces.name] = (three_nines, half, beats)
        m, s = by["meridian"], by["spothedge"]
        summary.append(
            f"| {traces.name} | {m.availability:.3%} | {m.savings_vs_ondemand:.1%} | {s.availability:.3%} "
            f"| {s.savings_vs_ondemand:.1%} | {'yes' if three_nines else 'no'} | {'yes' if half else 'no'} "
            f"| {'yes' if beats else 'no'} |"
        )
        folder = traces.zones[0].path.parent.relative_to(SPOT_TRACES_DIR)
        sections += [
            f"### {traces.name}",
            "",
            f"`{folder}`: {describe(traces)}. Simulated in {seconds:.1f} s.",
            "",
            "Prices: " + "; ".join(prices.notes) + ".",
            "",
            *table(rows),
            "",
        ]
        print(f"{traces.name}: {seconds:.1f} s", flush=True)
        if traces.name == SPARE_SWEEP_SET:
            up = np.stack([z.capacity > 0 for z in traces.zones])
            multi_zone_steps = int(((up[:, :-1] & ~up[:, 1:]).sum(axis=0) >= 2).sum())
            for spare in (1, 2, 3):
                (r,) = compare(traces, prices, config, CapacitySpec(spot_spare=spare), ["meridian"])
                sweep.append(f"| {spare} | {r.availability:.3%} | {r.savings_vs_ondemand:.1%} | {r.preemptions} |")
    total = time.perf_counter() - started
    text = "\n".join(
        [
            "# Spot capacity policies on the SkyPilot spot traces (simulated)",
            "",
            f"    .venv/bin/python -m benchmarks.capacity_sim --target {args.target}",
            "",
            "which runs, for each set (one folder and instance kind), the equivalent of",
            "",
            f"    meridian simulate capacity --spot-traces <set folder> --target {args.target} --json",
            "",
            f"All {len(summary) - 2} sets of `shared/data/spot/skypilot-spot-traces` (the 1-node 2022 folder",
            "holds four instance kinds in two zones, so it is four sets), target "
            f"{args.target} replicas for every set, {total:.0f} s in all on this machine.",
            "The simulator and its model are in `capacity/sim/spot_replay.py`; policies in",
            "`capacity/sim/peer_placements.py`, `capacity/sim/spothedge.py` and `capacity/policy/placement.py`",
            "(Meridian is `plan`, the live placement code, itself). Every policy is called as `plan` is, with",
            "its types (demand, nodes, catalog, spec, recent events); the simulator alone adapts the traces.",
            "",
            "## Model",
            "",
            "- A zone's value is the number of spot instances obtainable at that step; in 0/1 sets 1 means",
            "  available with no stated limit (as SpotHedge's loader reads its 9-zone set). Spot nodes above",
            "  the value are preempted at the step boundary, newest first, **without notice**; a spot launch",
            "  into a zone at its value fails at once (a stockout the policy sees and may route around in the",
            "  same step). On-demand launches always succeed.",
            f"- Provisioning {config.spot_delay_s:g} s (spot) and {config.on_demand_delay_s:g} s (on-demand), "
            "SpotHedge's evaluation cold start.",
            f"  A released running node is billed {config.drain_s:g} s more (drain) for every policy.",
            "- Availability: the fraction of time from the first provisioning delay to the end with at least",
            "  `target` nodes serving (time-weighted within steps). Cost: every node from launch to end at its",
            "  zone's price; savings against the all-on-demand policy on the same set.",
            "- Multi-node sets whose files differ in length are cut to the shortest file.",
            "",
            "## Prices",
            "",
            "The catalog extract has no V100, K80, r5 or c3 rows, so trace kinds map to the instance types the",
            "traces were collected on (`capacity/sim/trace_prices.py`): v100_1 = p3.2xlarge 3.06 USD/h, v100_8 =",
            "p3.16xlarge 24.48, k80_1 = p2.xlarge 0.90, k80_8 = p2.8xlarge 7.20, intel_64 = r5.16xlarge 4.032",
            "(AWS on-demand list prices), c3-88 = c3-highcpu-88 3.79 (computed from GCP's C3 us-central1 list",
            "rates). Spot: the trace's `prices` where the file has them (aws-04-19 and three aws-04-22 zones);",
            f"elsewhere {DEFAULT_SPOT_FRACTION:.2f} × on-demand, the ratio of the p3.2xlarge trace price (0.918) "
            "to its list",
            "price (3.06). That ratio is an assumption; with equal spot prices across a set, spreading is not",
            "rewarded or penalised by price. `--on-demand-price` / `--spot-price` override.",
            "",
            "## Policies",
            "",
            "- `on_demand`: target on-demand nodes. `naive_spot`: target spot nodes in the cheapest zone,",
            "  relaunched there. `round_robin`: target spot nodes, each replacement in the next zone",
            "  (spothedge_ae `round_robin.py`). No on-demand fallback for these two.",
            "- `spothedge`: SkyServe's DynamicFallbackSpotPlacer (zones preempted or stocked out leave the",
            "  active set, back on a ready replica, reset below two active) with target + 1 spot",
            "  (`overprovision_num=1`) and on-demand = min(target, target + 1 − ready spot)",
            "  (spothedge_ae `spot_failover_no_safety.py`, the paper's main experiment).",
            "- `meridian`: `capacity.policy.placement.plan` with the default spec: target + 1 spot spread over the",
            "  usable zones (fewest of ours, then fewest recent preemptions, then cheapest); zones that stocked",
            "  out or preempted us backed off 300 s, doubling per repeat within an hour, up to an hour;",
            "  on-demand only for spot that could not be placed, while booting spot counts as placed, and a",
            "  running on-demand node kept until ready spot covers it. The demand is homed in the set's region",
            "  with most zones, the set's other regions allowed as fallbacks and spread over (`spread_regions`).",
            "",
            "## Goal check",
            "",
            "Goal: Meridian ≥ 99.9% availability, ≥ 50% savings against all on-demand, and more savings than",
            "SpotHedge at equal or better availability.",
            "",
            *summary,
            "",
            *verdict(checks),
            "In this model every preemption the spare cannot absorb costs a provisioning delay of outage,",
            f"and zones fail together: in {SPARE_SWEEP_SET}, {multi_zone_steps} steps lose two or more zones at",
            "once. Three nines then needs standing redundancy that costs the savings, as the spare sweep shows.",
            "",
            f"Meridian with more spot spare on {SPARE_SWEEP_SET}:",
            "",
            "| spot_spare | availability | savings | preemptions |",
            "|---|---|---|---|",
            *sweep,
            "",
            "Not modelled: preemption notices (AWS gives two minutes; the live policy drains and replaces",
            "on a notice, which the simulator cannot credit because the traces only say a zone was",
            "unavailable at a sample, not when a node was warned), and on-demand stockouts.",
            "",
            "## Per set",
            "",
            *sections,
        ]
    )
    args.out.write_text(text.rstrip() + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
