"""Replay every spot trace set in shared/data/spot under the five capacity policies; write capacity.md.

    .venv/bin/python -m benchmarks.capacity_sim [--target 4] [--out benchmarks/results/capacity.md]

The same code as `meridian simulate capacity --spot-traces <set folder> --target 4 --json`
(capacity.sim.spot_replay.compare with the default SpotReplayConfig and CapacitySpec), run over each
set (preemption notices per cloud: AWS 120 s, GCP 30 s); then the goal policies without notices and at
target 2, a clairvoyant savings bound per set, and Meridian's hedge cap swept on the largest set.
One target and one configuration for every set; nothing is tuned per set.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from capacity.catalog import default_catalog
from capacity.sim.spot_replay import POLICIES, PREEMPTION_NOTICE_S, SpotReplayConfig, SpotReplayResult, compare
from capacity.sim.spot_traces import TraceSet, load_sets
from capacity.sim.trace_prices import DEFAULT_SPOT_FRACTION, ZonePrices, zone_prices
from meridian_core.capacity_spec import CapacitySpec
from meridian_core.shared_data import SPOT_TRACES_DIR

OUT = Path(__file__).resolve().parent / "results" / "capacity.md"
HEDGE_SWEEP_SET = "aws-02-15-2023/v100_1"
SECOND_TARGET = 2  # the held-out runs' target
PEERS = ("spothedge", "round_robin")
GOAL_POLICIES = ("round_robin", "spothedge", "meridian")


def beats(meridian: SpotReplayResult, peer: SpotReplayResult) -> bool:
    """More savings than the peer wherever the peer is at least as available."""
    return peer.availability < meridian.availability or meridian.savings_vs_ondemand > peer.savings_vs_ondemand


def goal(results: dict[str, SpotReplayResult]) -> tuple[bool, ...]:
    meridian = results["meridian"]
    return (
        meridian.availability >= 0.999,
        meridian.savings_vs_ondemand >= 0.5,
        *(beats(meridian, results[peer]) for peer in PEERS),
    )


GOAL_LABELS = ("reaches 99.9% availability", "saves at least 50%", "beats SpotHedge", "beats round-robin")


def verdict(checks: dict[str, tuple[bool, ...]]) -> list[str]:
    n = len(checks)
    parts = []
    for index, label in enumerate(GOAL_LABELS):
        hits = [name for name, flags in checks.items() if flags[index]]
        misses = [name for name, flags in checks.items() if not flags[index]]
        parts.append(
            f"- Meridian {label} on **{len(hits)} of {n}** sets" + (f"; not on {', '.join(misses)}." if misses else ".")
        )
    all_met = [name for name, flags in checks.items() if all(flags)]
    parts.append(f"- The whole goal holds on **{len(all_met)} of {n}** sets.")
    return [*parts, ""]


def goal_table(by_set: dict[str, dict[str, SpotReplayResult]], bounds: dict[str, float]) -> list[str]:
    lines = [
        "| set | Meridian | SpotHedge | round-robin | savings bound | ≥ 99.9% | ≥ 50% | beats SpotHedge | beats RR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, results in by_set.items():
        cells = [
            f"{results[p].availability:.3%} / {results[p].savings_vs_ondemand:.1%}" for p in reversed(GOAL_POLICIES)
        ]
        flags = ["yes" if flag else "no" for flag in goal(results)]
        lines.append(f"| {name} | {' | '.join(cells)} | {bounds[name]:.1%} | {' | '.join(flags)} |")
    return lines


def short_of_half(by_set: dict[str, dict[str, SpotReplayResult]], bounds: dict[str, float]) -> list[str]:
    """Why savings fall short of 50% where they do: the clairvoyant bound, measured."""
    short = [name for name, results in by_set.items() if results["meridian"].savings_vs_ondemand < 0.5]
    if not short:
        return []
    cells = ", ".join(
        f"{name} (Meridian {by_set[name]['meridian'].savings_vs_ondemand:.1%}, bound {bounds[name]:.1%})"
        for name in short
    )
    return [
        f"Savings under 50%: {cells}. Where the bound itself is near or under 50%, spot is missing from every",
        "zone for much of the trace, and any fully available fleet runs on demand then.",
        "",
    ]


def savings_bound(traces: TraceSet, prices: ZonePrices, target: int) -> float:
    """Savings of a clairvoyant fleet: each step, as many of the target on spot as the zones hold
    (at the cheapest spot price among zones with any), the rest on demand; no boot time, no spare."""
    capacity = np.stack([z.capacity for z in traces.zones]).astype(np.float64)  # zones × steps
    spot_nodes = np.minimum(capacity.sum(axis=0), target)
    cheapest_spot = np.where(capacity > 0, prices.spot, np.inf).min(axis=0)
    cheapest_spot = np.where(np.isfinite(cheapest_spot), cheapest_spot, 0.0)
    on_demand = float(prices.on_demand.min())
    cost = (spot_nodes * cheapest_spot + (target - spot_nodes) * on_demand).sum()
    return 1.0 - float(cost) / (target * on_demand * traces.steps)


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


def run_sets(target: int) -> dict[str, object]:
    """Every set: all policies with notices (per-set tables), and the three goal policies without
    notices and at the second target; the savings bounds; the hedge cap sweep on one set."""
    catalog = default_catalog()
    config = SpotReplayConfig(target=target)
    no_notice = SpotReplayConfig(target=target, notice_s={})
    second = SpotReplayConfig(target=SECOND_TARGET)
    out: dict[str, dict] = {key: {} for key in ("main", "plain", "second", "bound", "bound2", "sections")}
    sweep: list[str] = []
    multi_zone_steps = 0
    for traces in sorted(load_sets([SPOT_TRACES_DIR]), key=lambda t: t.name):
        prices = zone_prices(traces, catalog)
        t0 = time.perf_counter()
        rows = compare(traces, prices, config, CapacitySpec(), POLICIES)
        seconds = time.perf_counter() - t0
        name = traces.name
        out["main"][name] = {r.policy: r for r in rows}
        out["plain"][name] = {r.policy: r for r in compare(traces, prices, no_notice, CapacitySpec(), GOAL_POLICIES)}
        out["second"][name] = {r.policy: r for r in compare(traces, prices, second, CapacitySpec(), GOAL_POLICIES)}
        out["bound"][name] = savings_bound(traces, prices, target)
        out["bound2"][name] = savings_bound(traces, prices, SECOND_TARGET)
        folder = traces.zones[0].path.parent.relative_to(SPOT_TRACES_DIR)
        out["sections"][name] = [
            f"### {name}",
            "",
            f"`{folder}`: {describe(traces)}. All policies simulated in {seconds:.1f} s.",
            "",
            "Prices: " + "; ".join(prices.notes) + ".",
            "",
            *table(rows),
            "",
        ]
        print(f"{name}: {seconds:.1f} s", flush=True)
        if name == HEDGE_SWEEP_SET:
            up = np.stack([z.capacity > 0 for z in traces.zones])
            multi_zone_steps = int(((up[:, :-1] & ~up[:, 1:]).sum(axis=0) >= 2).sum())
            for cap in (0, 1, 2, 3):
                (r,) = compare(traces, prices, no_notice, CapacitySpec(spot_spare=cap), ["meridian"])
                sweep.append(f"| {cap} | {r.availability:.3%} | {r.savings_vs_ondemand:.1%} | {r.preemptions} |")
    return {**out, "sweep": sweep, "multi_zone_steps": multi_zone_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", type=int, default=4)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not SPOT_TRACES_DIR.is_dir():
        raise SystemExit(f"no spot traces at {SPOT_TRACES_DIR}")
    config = SpotReplayConfig(target=args.target)
    spec = CapacitySpec()
    started = time.perf_counter()
    runs = run_sets(args.target)
    total = time.perf_counter() - started
    main_runs, plain, second = runs["main"], runs["plain"], runs["second"]
    checks = {name: goal(results) for name, results in main_runs.items()}
    plain_checks = {name: goal(results) for name, results in plain.items()}
    second_checks = {name: goal(results) for name, results in second.items()}
    notices = ", ".join(f"{cloud.upper()} {seconds:g} s" for cloud, seconds in PREEMPTION_NOTICE_S.items())
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
            f"and, for the goal policies, the same without preemption notices and at target {SECOND_TARGET}",
            f"(the held-out runs' target). All {len(main_runs)} sets of `shared/data/spot/skypilot-spot-traces`",
            "(the 1-node 2022 folder holds four instance kinds in two zones, so it is four sets), one",
            f"configuration (the default `CapacitySpec`) for every set, {total:.0f} s in all on this machine.",
            "The simulator and its model are in `capacity/sim/spot_replay.py`; policies in",
            "`capacity/sim/peer_placements.py`, `capacity/sim/spothedge.py` and `capacity/policy/placement.py`",
            "(Meridian is `plan`, the live placement code, itself). Every policy is called as `plan` is, with",
            "its types (demand, nodes, catalog, spec, recent events); the simulator alone adapts the traces.",
            "",
            "## Model",
            "",
            "- A zone's value is the number of spot instances obtainable at that step; in 0/1 sets 1 means",
            "  available with no stated limit (as SpotHedge's loader reads its 9-zone set). When the value drops",
            "  below the spot nodes held there, the newest are preempted; a spot launch into a zone at its",
            "  value fails at once (a stockout the policy sees and may route around in the same step).",
            "  On-demand launches always succeed.",
            f"- **Preemption notices** ({notices}; `SpotReplayConfig.notice_s`). The traces sample availability",
            "  every `gap` seconds and do not say when a node was warned, so the simulator **assumes** the first",
            "  sample that shows the loss is the notice, and the node is taken `notice` seconds later. This is",
            "  the most favourable placement the traces allow; if the real loss fell anywhere in the preceding",
            "  gap, a node was lost up to one gap earlier, and the no-notice table below is the other bound.",
            "  A warned node is passed to every policy as DRAINING with a PREEMPTION_NOTICE event, as the live",
            "  AWS provider reports a `marked-for-termination` spot request (`capacity/live/aws.py`); it serves",
            "  until taken, then a PREEMPTED event follows. Meridian's `plan` does not count a draining node, so",
            "  it buys the replacement at the notice (spot elsewhere, or on demand when spot stocks out); with",
            f"  AWS's 120 s notice and {config.spot_delay_s:g} s provisioning it is ready when the node goes. GCP's",
            "  30 s notice covers a quarter of a boot; the live GCP provider reads it as the preemption zone",
            "  operation that has started but is not DONE (`capacity/live/gcp.py`), on the assumption that GCE",
            "  lists it while the VM stops, not verified against GCE from here (the emulated Compute API does).",
            "  SpotHedge (SkyServe) and round-robin get the same node states and events;",
            "  as published they act on losses, not notices, except that SpotHedge's on-demand top-up counts",
            "  only ready spot, so it also buys on demand at a notice. Every policy is called again the moment",
            "  a warned node is taken, as a live loop hears of it, so acting on losses costs one provisioning",
            "  delay, not the rest of the sample's gap.",
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
            "- `meridian`: `capacity.policy.placement.plan` with the default spec. Spot for the target, spread",
            "  over the usable zones (fewest of ours, then fewest recent preemptions, then cheapest), plus an",
            "  **adaptive hedge**: no spare while the demand's zones have been calm for "
            f"{spec.hedge_calm_s:g} s (`hedge_calm_s`);",
            "  after a loss, as many spares as the most nodes lost within any "
            f"{spec.hedge_burst_s:g} s (`hedge_burst_s`) of the last",
            f"  {spec.event_memory_s:g} s, i.e. zones failing together, at most {spec.spot_spare} (`spot_spare`). "
            "Spares go where the spread puts",
            "  any node, so away from the zones that preempted us. Zones that stocked out or preempted us are",
            "  backed off 300 s, doubling per repeat within an hour, up to an hour. On a notice the node is not",
            "  counted and its replacement bought at once. On-demand only for spot that could not be placed;",
            "  booting spot counts as placed, and an on-demand node (booting or running) is kept until ready",
            "  spot covers it. The demand is homed in the set's region with most zones, the set's other",
            "  regions allowed as fallbacks and spread over (`spread_regions`).",
            "",
            "## Goal check",
            "",
            "Goal on every set: Meridian ≥ 99.9% availability, ≥ 50% savings against all on-demand, and more",
            "savings than SpotHedge and round-robin wherever they reach at least Meridian's availability.",
            "Cells are availability / savings. *Savings bound*: a clairvoyant fleet that knows each step's",
            "capacity, needs no boot time and holds no spare (each step, as many of the target on spot as the",
            "zones hold at the cheapest spot price there, the rest on demand); no policy saves more at full",
            "availability in this model.",
            "",
            f"### Target {args.target}, with notices",
            "",
            *goal_table(main_runs, runs["bound"]),
            "",
            *verdict(checks),
            *short_of_half(main_runs, runs["bound"]),
            f"### Target {SECOND_TARGET}, with notices",
            "",
            *goal_table(second, runs["bound2"]),
            "",
            *verdict(second_checks),
            f"### Target {args.target}, without notices (every loss at the sample, as before this change)",
            "",
            *goal_table(plain, runs["bound"]),
            "",
            *verdict(plain_checks),
            "Without notice every loss the hedge has not covered costs a provisioning delay of outage, and",
            f"zones fail together (in {HEDGE_SWEEP_SET}, {runs['multi_zone_steps']} steps lose two or more zones",
            "at once), so 99.9% is out of reach at these savings; the hedge then buys availability only after",
            "a set starts losing nodes. This is the regime of the live GCP path today.",
            "",
            f"Meridian's hedge cap (`spot_spare`) on {HEDGE_SWEEP_SET}, without notices:",
            "",
            "| spot_spare (cap) | availability | savings | preemptions |",
            "|---|---|---|---|",
            *runs["sweep"],
            "",
            "Not modelled: on-demand stockouts; where inside a gap a loss happened (see the notice assumption).",
            "",
            "## Per set (target " + str(args.target) + ", with notices)",
            "",
            *[line for section in runs["sections"].values() for line in section],
        ]
    )
    args.out.write_text(text.rstrip() + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
