"""Mutation check: break one feature at a time and see that the unit suite fails.

Each mutation below removes or bends one behaviour Meridian promises (a policy rule, a
router guarantee, a provider call). For each, the check copies the repository to a
scratch folder (never touching the work tree), applies that one edit, runs the whole
unit suite there and records whether some test failed. A mutation that leaves the suite
green is a feature no test guards.

    .venv/bin/python tests/mutation_check.py            # all mutations, ~1 min each
    .venv/bin/python tests/mutation_check.py --only 3 7  # some of them
    .venv/bin/python tests/mutation_check.py --list

Exit status 1 if any mutation survived, or if a mutation's text is no longer in the code
(the list must follow the code it breaks). A mutation of routing_core/ (Rust) is built
with cargo and imported in the copy ahead of the installed module. Not collected by
pytest: it runs pytest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SUITE_TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutation:
    path: str
    old: str
    new: str
    breaks: str


MUTATIONS = (
    # The autoscaler's policy.
    Mutation(
        "autoscaler/policy/slo_policy.py",
        "        if burst_needed > needed:\n",
        "        if False:\n",
        "burst sizing removed (the fluid's count is never used)",
    ),
    Mutation(
        "autoscaler/policy/slo_capacity.py",
        "        backlog = np.maximum(backlog + drift, 0.0)\n",
        "        backlog = np.zeros(counts)\n",
        "the fluid carries no backlog from one interval to the next",
    ),
    Mutation(
        "autoscaler/policy/slo_policy.py",
        "    if slope <= 0:\n        return growth\n",
        "    return growth\n",
        "bursts recorded at a lower level are not grown to the level ahead",
    ),
    Mutation(
        "autoscaler/policy/slo_policy.py",
        "    if bins > recent:\n",
        "    if False:\n",
        "a climb out of a trough that has levelled off still counts as growth",
    ),
    Mutation(
        "autoscaler/policy/slo_policy.py",
        "            step = min(config.correction_step ** (2**streak), config.correction_step_max)",
        "            step = config.correction_step",
        "steps in a row do not grow: a model far off is caught slowly",
    ),
    Mutation(
        "autoscaler/policy/slo_policy.py",
        "        return ScalingDecision(target, reason), new_state",
        "        return ScalingDecision(max(signals.ready, scaling.min_replicas), reason), new_state",
        "the policy never acts: it keeps the replicas it has",
    ),
    Mutation(
        "autoscaler/policy/slo_policy.py",
        "            correction = min(correction * step, config.correction_max)",
        "            correction = correction",
        "no correction after a breach longer than a cold start",
    ),
    Mutation(
        "autoscaler/policy/slo_policy.py",
        "        target = max(entry[1] for entry in recent)",
        "        target = desired",
        "no scale-down hold: drops replicas at once",
    ),
    Mutation(
        "autoscaler/policy/slo_policy.py",
        "            target = 0\n",
        "            target = 1\n",
        "never scales to zero",
    ),
    Mutation(
        "autoscaler/policy/slo_policy.py",
        "    best_lag = int(lags[pick]) if corr[pick] >= min_corr else 0",
        "    best_lag = 0",
        "no seasonal forecast",
    ),
    Mutation(
        "autoscaler/sim/cli.py",
        "results.append(demand_replay.simulate(trace, contender.policy, config, contender.setting, report))",
        "results.append(demand_replay.simulate(trace, contender.policy, None, contender.setting, report))",
        "`meridian simulate autoscale` crashes (a TypeError inside the line-up)",
    ),
    Mutation(
        "autoscaler/live/serve_policy.py",
        "if floor is None or floor.replicas <= own.own_target:",
        "if True:",
        "the global loop's floors are ignored by the Serve adapter",
    ),
    # The router.
    Mutation(
        "geo_router/live/breaker.py",
        "        if self.opened_at is None or self.half_open(now):\n            self._close()",
        "        if True:\n            self._close()",
        "a successful request also closes an open breaker",
    ),
    Mutation(
        "geo_router/live/breaker.py",
        "        if self.opened_at is None or (self.half_open(now) and not self.opened_by_requests):",
        "        if True:",
        "a good probe closes the breaker before open_s",
    ),
    Mutation(
        "geo_router/live/upstream.py",
        "                async for chunk in response.content.iter_any():\n                    yield chunk",
        "                yield await response.content.read()",
        "the aiohttp adapter buffers the whole answer before relaying it",
    ),
    Mutation(
        "geo_router/live/upstream.py",
        "            except (TimeoutError, aiohttp.ClientError) as error:\n"
        "                raise UpstreamError(type(error).__name__) from None\n\n"
        "        async def close",
        "            except (TimeoutError, aiohttp.ClientError):\n                return\n\n        async def close",
        "the aiohttp adapter hides a stream that broke mid-answer",
    ),
    Mutation(
        "geo_router/live/upstream.py",
        "        return UpstreamResponse(response.status, response.headers, chunks(), close)",
        "        return UpstreamResponse(200 if response.status >= 500 else response.status, "
        "response.headers, chunks(), close)",
        "the aiohttp adapter reports a region's 5xx as 200",
    ),
    Mutation(
        "geo_router/live/proxy.py",
        "    return 300 <= status < 400 or status == 404 or status == 408 or status >= 500",
        "    return 300 <= status < 400 or status == 408 or status >= 500",
        "a region whose route is gone (404) is not failed over",
    ),
    Mutation(
        "routing_core/src/scoring.rs",
        "        let sticky = previous.as_deref() == Some(estimates[i].region.as_str());",
        "        let sticky = false;",
        "no hysteresis",
    ),
    Mutation(
        "routing_core/src/scoring.rs",
        "    let cost = |i: usize| ttft(i) + (factor - 1.0) * f64::max(0.0, estimates[i].rtt_ms - home_rtt);",
        "    let cost = |i: usize| ttft(i) + 0.0 * factor;",
        "leaving the nearest region costs its extra RTT only once",
    ),
    Mutation(
        "routing_core/src/scoring.rs",
        "    let factor = scoring.spill_rtt_factor * memory.spill_price.markup;",
        "    let factor = scoring.spill_rtt_factor;",
        "spills ignore the mean RTT budget",
    ),
    Mutation(
        "routing_core/src/scoring.rs",
        "        if sticky != best && held(sticky) <= held(best) + scoring.affinity_margin_ms {",
        "        if sticky != best && held(sticky) < 0.0 * held(best) {",
        "no prefix or session affinity",
    ),
    Mutation(
        "routing_core/src/scoring.rs",
        '        reason = "spill";',
        '        reason = "load";',
        "spills are not reported as spills",
    ),
    Mutation(
        "routing_core/src/rtt_corrector.rs",
        "        total / self.learned.len() as f64",
        "        0.0 * total",
        "an unobserved region does not inherit the fleet's RTT correction",
    ),
    Mutation(
        "routing_core/src/scoring.rs",
        "        .zip(profiles)\n",
        "        .zip(std::iter::repeat(&profiles[0]))\n",
        "every region's TTFT is estimated with one region's replica profile",
    ),
    Mutation(
        "routing_core/src/scoring.rs",
        "    let mut queue = 1000.0 * f64::max(prefill_ahead_s, slot_wait_s);",
        "    let mut queue = 1000.0 * prefill_ahead_s + 0.0 * slot_wait_s;",
        "the estimate ignores waiting for a sequence slot",
    ),
    # The router's compiled front (its tests run on both of the router's paths).
    Mutation(
        "routing_core/src/front/relay.rs",
        "(300..400).contains(&status) || status == 404 || status == 408 || status >= 500",
        "(300..400).contains(&status) || status == 408 || status >= 500",
        "the compiled front does not fail over from a region whose route is gone (404)",
    ),
    Mutation(
        "routing_core/src/front/relay.rs",
        '        if self.stream {\n            let message = format!("the stream from region {} broke"',
        '        if false {\n            let message = format!("the stream from region {} broke"',
        "a stream the compiled front relays ends without an error event when it breaks",
    ),
    Mutation(
        "routing_core/src/front/relay.rs",
        "                _ = &mut hung_up => break,\n",
        "",
        "the compiled front does not hear a client hang up while the region is silent",
    ),
    Mutation(
        "routing_core/src/front/mod.rs",
        "        if key_limits.admit(charged as f64, now) > 0.0 {",
        "        if key_limits.admit(charged as f64, now) > f64::INFINITY {",
        "the compiled front serves a request over its key's limits",
    ),
    Mutation(
        "routing_core/src/front/relay.rs",
        "                    limits.settle(settle.charged as f64, used as f64, shared.monotonic());",
        "",
        "the compiled front keeps a token charge made ahead instead of settling it on usage",
    ),
    Mutation(
        "routing_core/src/front/clients.rs",
        "                .with_root_certificates(trusted(ca_file)?)",
        "                .with_root_certificates(RootCertStore::empty())",
        "the compiled front trusts no CA for a region reached over TLS",
    ),
    Mutation(
        "routing_core/src/front/relay.rs",
        "        filter: (settle.hide_usage && admitted.stream).then(UsageEventFilter::default),",
        "        filter: None,",
        "the compiled front relays the usage event it asked for on a client's behalf",
    ),
    Mutation(
        "routing_core/src/front/back.rs",
        "!HOP_BY_HOP.contains(&name.as_str()) && name != PEER_HEADER",
        "!HOP_BY_HOP.contains(&name.as_str())",
        "a client sets the address the compiled front hands on",
    ),
    Mutation(
        "geo_router/sim/routing_replay.py",
        " or self.kv_tokens + kv_needed > profile.kv_capacity_tokens",
        "",
        "the routing simulator's replicas never run out of KV cache",
    ),
    Mutation(
        "meridian/cli.py",
        "PROFILES[profile or r.profile]",
        "PROFILES[r.profile]",
        "`meridian simulate routing --profile` is ignored",
    ),
    Mutation(
        "meridian_core/rtt.py",
        "RTT_MS_PER_KM = 0.01495",
        "RTT_MS_PER_KM = 0.02",
        "the RTT prior's slope is not the fitted one",
    ),
    Mutation(
        "routing_core/src/limits.rs",
        "        f64::max(0.0, (amount - self.level) / (self.capacity / self.period_s))",
        "        0.0",
        "rate limits never refuse",
    ),
    Mutation(
        "geo_router/live/auth.py",
        "            if hmac.compare_digest(presented, key.sha256):",
        "            if True:",
        "any API key is accepted",
    ),
    # The contracts between processes.
    Mutation(
        "meridian_core/contracts.py",
        "Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]",
        "Count = int",
        "replica counts and targets in messages are unbounded",
    ),
    Mutation(
        "meridian_core/contracts.py",
        "            if len(raw) > MAX_MESSAGE_BYTES:",
        "            if False:",
        "a message over the size cap is parsed anyway",
    ),
    # Capacity.
    Mutation(
        "capacity/live/capacity_loop.py",
        "    return min(target, most)",
        "    return target",
        "a published target past max_replicas buys nodes for it",
    ),
    Mutation(
        "autoscaler/policy/region_view.py",
        "if view.at >= newest - STALE_AFTER_S}",
        "if True}",
        "a model no longer deployed keeps its region's nodes",
    ),
    Mutation(
        "autoscaler/live/global_loop.py",
        "RegionView(region.name, scaling.own_target,",
        "RegionView(region.name, scaling.target,",
        "floors are planned from floored targets, so a persistent shortfall ratchets them up",
    ),
    Mutation(
        "autoscaler/live/global_loop.py",
        'return {"Authorization": f"Bearer {self.tokens.get(region.name, \'\')}"}',
        "return {}",
        "the global loop sends floors without the region's control token",
    ),
    Mutation(
        "capacity/live/providers.py",
        "    offerings = [o for o in catalog.offerings(cloud=cloud, region=region) if o.instance_type in types]",
        "    offerings = list(catalog.offerings(cloud=cloud, region=region))",
        "a region buys instance types its settings do not name",
    ),
    Mutation(
        "capacity/live/aws.py",
        "            raise ProviderError(where, error.operation_name, code) from None",
        "            raise",
        "an EC2 permission error escapes as an SDK traceback",
    ),
    Mutation(
        "meridian_core/cluster_spec.py",
        "        if self.managed and (self.address or self.dashboard_url):",
        "        if False:",
        "a managed cluster with an address is accepted",
    ),
    Mutation(
        "capacity/live/capacity_loop.py",
        "            if acquisition.is_fallback:",
        "            if False:",
        "a node is bought in another region for demand whose replicas cannot run there",
    ),
    Mutation(
        "capacity/policy/placement.py",
        "        if zone_until > self._now:",
        "        if False:",
        "zones that stocked out or preempted are not backed off",
    ),
    Mutation(
        "capacity/policy/placement.py",
        "    if limit is not None and used + demand.accelerator_count > limit:",
        "    if False:",
        "quotas are not respected",
    ),
    Mutation(
        "capacity/policy/placement.py",
        "    for index, demand in enumerate(demands):",
        "    for index, demand in enumerate(demands[:0]):",
        "placement buys nothing",
    ),
    Mutation(
        "capacity/sim/spothedge.py",
        "        self.preempted.add(zone)",
        "        pass",
        "SpotHedge's placer never moves a zone out",
    ),
    Mutation(
        "capacity/live/aws.py",
        '                "MarketType": "spot",',
        '                "MarketType": "capacity-block",',
        "AWS spot launches do not ask for the spot market",
    ),
    Mutation(
        "capacity/live/gcp.py",
        '                provisioning_model="SPOT",',
        '                provisioning_model="STANDARD",',
        "GCP spot launches are on-demand VMs",
    ),
    # The region's engine readings, the router's input checks and the spec.
    Mutation(
        "geo_router/live/locate.py",
        "        value = headers.get(LOCATION_HEADER)\n",
        "        value = None\n",
        "X-Client-Location is ignored",
    ),
    Mutation(
        "geo_router/live/requests.py",
        "    return choices * per_choice",
        "    return 1",
        "tokens-per-minute ignores the completion cap",
    ),
    Mutation(
        "meridian_core/spec.py",
        "    lat: float = Field(ge=-90, le=90)",
        "    lat: float",
        "a latitude out of range is accepted",
    ),
    Mutation(
        "meridian_core/spec.py",
        "        if value not in PROFILES:",
        "        if False:",
        "a region naming an unknown replica profile is accepted",
    ),
    Mutation(
        "deployments/engine_stats.py",
        'WAITING = "vllm:num_requests_waiting"',
        'WAITING = "vllm:num_requests_swapped"',
        "the region's waiting requests are read from the wrong gauge",
    ),
    Mutation(
        "deployments/region_auth.py",
        'if scope["type"] == "http" and digest is not None and not presents_token(Headers(scope=scope), digest):',
        "if False:",
        "a region with a token answers requests without it",
    ),
    Mutation(
        "deployments/shared_poll.py",
        "            return self._recent(key)",
        "            return []",
        "a region whose replicas are slow to report their load reports none ready, and loses its traffic",
    ),
    Mutation(
        "geo_router/live/proxy.py",
        "url, headers = region.openai_url(request.model, path), {**headers, **region.auth_headers()}",
        "url, headers = region.openai_url(request.model, path), headers",
        "the router forwards requests to a region without the region's token",
    ),
    Mutation(
        "capacity/policy/placement.py",
        "    del outcome.shortfalls[first_spot_shortfall:]",
        "    pass",
        "a spot gap that on-demand fills is counted short, twice for what neither market can place",
    ),
    Mutation(
        "meridian_host/region_tokens.py",
        '    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster_ray_token(state, cluster) or ""}',
        '    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ""}',
        "a managed cluster's processes get no Ray token",
    ),
    Mutation(
        "meridian/launcher.py",
        "            if spec.all_or_nothing:\n                raise",
        "            if True:\n                raise",
        "a region that cannot start stops the whole platform, whatever the spec says",
    ),
    Mutation(
        "geo_router/live/regions.py",
        "        return self.autoscaled and not self.out_of_capacity",
        "        return self.autoscaled",
        "the router holds requests for a region that cannot place a replica",
    ),
    Mutation(
        "capacity/live/capacity_loop.py",
        "now if joined is None or node.ray_label in joined else",
        "now if True else",
        "a bought node that never joins its region's cluster is held for ever",
    ),
    Mutation(
        "capacity/live/capacity_loop.py",
        "now if joined is None or node.ray_label in joined else",
        "now if node.ray_label in (joined or set()) else",
        "an outage of Ray's state API releases every node",
    ),
    Mutation(
        "autoscaler/policy/slo_policy.py",
        "prefilled = float(sized[:, 3].sum())",
        "prefilled = float(sized[:, 0].sum())",
        "token means divide by arrivals, not by the requests whose tokens were counted",
    ),
    Mutation(
        "autoscaler/live/replica_reports.py",
        "report.first_tokens_total,",
        "report.arrived_total,",
        "the live tracker counts arrivals as prefilled",
    ),
    Mutation(
        "geo_router/live/regions.py",
        'return f"{self.endpoint}{model_route(model)}/v1/{path}"',
        'return f"{self.endpoint}/v1/{path}"',
        "the router sends a request to its region's control app, not to its model's own app",
    ),
    Mutation(
        "meridian/launcher.py",
        '    for wanted in ("DEPLOY_FAILED", "UNHEALTHY"):',
        '    for wanted in ("UNHEALTHY",):',
        "up waits on a region whose model app failed to deploy, not saying why",
    ),
    Mutation(
        "autoscaler/live/serve_policy.py",
        "signals = replace(signals, waiting=signals.waiting + queued,",
        "signals = replace(signals, waiting=signals.waiting,",
        "requests held for a model at zero replicas never wake it",
    ),
    Mutation(
        "autoscaler/policy/slo_policy.py",
        "        in_region = signals.waiting + signals.running",
        "        in_region = signals.waiting",
        "a region scales to zero under a request its replica still runs",
    ),
)


def copy_repo(into: Path) -> Path:
    """The tracked files (and the work tree's uncommitted edits to them) in `into/main`,
    with the shared data beside it as in the real checkout."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    root = into / "main"
    for name in files:
        source = REPO / name
        if source.is_file():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    if SHARED.is_dir():
        (into / "shared").symlink_to(SHARED)
    return root


def build_routing_core(root: Path, target_dir: Path) -> bool:
    """Build `root`'s routing_core/ and put the module at `root`, where the suite imports
    it ahead of the installed one. False if it does not build."""
    built = subprocess.run(
        [
            "cargo",
            "build",
            "--release",
            "--quiet",
            "--features",
            "python,front",
            "--manifest-path",
            str(root / "routing_core" / "Cargo.toml"),
        ],
        cwd=root / "routing_core",
        env={**os.environ, "CARGO_TARGET_DIR": str(target_dir), "PYO3_PYTHON": sys.executable},
        capture_output=True,
        timeout=SUITE_TIMEOUT_S,
    )
    if built.returncode != 0:
        return False
    shutil.copy2(target_dir / "release" / "librouting_core.so", root / f"routing_core{EXTENSION_SUFFIXES[0]}")
    return True


def run_suite(root: Path) -> tuple[bool, str]:
    """(some test failed, the last line of pytest's summary)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not e2e", "-p", "no:cacheprovider", "tests"]
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return True, f"suite timed out after {SUITE_TIMEOUT_S} s"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode != 0, lines[-1] if lines else done.stderr.strip()[-200:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=int, nargs="+", help="mutation numbers (see --list)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args()
    chosen = [(i, m) for i, m in enumerate(MUTATIONS, 1) if not args.only or i in args.only]
    if args.list:
        for i, mutation in chosen:
            print(f"{i:2}. {mutation.path}: {mutation.breaks}")
        return 0
    survived = stale = 0
    with tempfile.TemporaryDirectory(prefix="meridian-mutation-") as scratch:
        root = copy_repo(Path(scratch))
        broken, summary = run_suite(root)
        if broken:
            print(f"the unmutated suite fails ({summary}); fix that first")
            return 1
        for i, mutation in chosen:
            path = root / mutation.path
            original = path.read_text()
            if original.count(mutation.old) != 1:
                print(f"{i:2}. STALE   {mutation.path}: the text to break is not there exactly once")
                stale += 1
                continue
            mutated = original.replace(mutation.old, mutation.new)
            compiled = path.suffix == ".rs"
            if not compiled:
                try:
                    compile(mutated, str(path), "exec")
                except SyntaxError as error:  # a mutation that no longer parses proves nothing
                    print(f"{i:2}. STALE   {mutation.path}: the mutated file does not parse ({error.msg})")
                    stale += 1
                    continue
            path.write_text(mutated)
            began = time.monotonic()
            try:
                if compiled and not build_routing_core(root, Path(scratch) / "target"):
                    print(f"{i:2}. STALE   {mutation.path}: the mutated crate does not build")
                    stale += 1
                    continue
                caught, summary = run_suite(root)
            finally:
                path.write_text(original)
                (root / f"routing_core{EXTENSION_SUFFIXES[0]}").unlink(missing_ok=True)
            verdict = "caught  " if caught else "SURVIVED"
            survived += not caught
            print(f"{i:2}. {verdict} {mutation.breaks} [{time.monotonic() - began:.0f} s: {summary}]", flush=True)
    print(f"{len(chosen) - survived - stale} of {len(chosen)} caught; {survived} survived; {stale} stale")
    return 1 if survived or stale else 0


if __name__ == "__main__":
    sys.exit(main())
