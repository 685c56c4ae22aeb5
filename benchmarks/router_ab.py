"""Meridian's router against itself at another commit: what one router change bought.

Two routers run side by side in front of the same fast streaming upstream (the
throughput load of router_overhead.py: `--concurrency` streams of 8 back-to-back
events): one from `--base` (a git ref, checked out in a temporary worktree) and one from
this checkout as it is. After a warm-up of each, `--repeats` rounds measure both, in
alternating order, `--requests` requests each. Prints each one's requests/s per round,
their medians and the ratio; nothing is written to results/.

    .venv/bin/python benchmarks/router_ab.py --base HEAD~1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.router_overhead import UPSTREAM_PORT, drive, meridian_spec, upstream_command, wait_serving  # noqa: E402
from benchmarks.servers import served  # noqa: E402

PORTS = {"base": 28305, "this checkout": 28306}
# The router of the tree given first, at log level info, as `meridian up` runs it.
ROUTER_FROM_TREE = (
    "import logging, sys; sys.path.insert(0, sys.argv[1]); "
    "logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s'); "
    "from geo_router.__main__ import main; sys.exit(main(sys.argv[2:]))"
)


def spec_on_port(scratch: Path, name: str, port: int) -> Path:
    document = yaml.safe_load(meridian_spec(scratch).read_text())
    document["router"]["port"] = port
    path = scratch / f"router-{name.replace(' ', '-')}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git ref of the router to compare against")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000, help="per router and round")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        base_tree = scratch / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_tree), args.base], check=True)
        try:
            trees = {"base": base_tree, "this checkout": REPO}
            upstream = upstream_command(tokens=8, gap_ms=0)
            with contextlib.ExitStack() as stack:
                stack.enter_context(
                    served(upstream, f"http://127.0.0.1:{UPSTREAM_PORT}/health", scratch / "upstream.log", None, 60)
                )
                urls = {}
                for name, tree in trees.items():
                    spec = spec_on_port(scratch, name, PORTS[name])
                    command = [sys.executable, "-c", ROUTER_FROM_TREE, str(tree), str(spec)]
                    base_url = f"http://127.0.0.1:{PORTS[name]}"
                    log = scratch / f"router-{PORTS[name]}.log"
                    stack.enter_context(served(command, f"{base_url}/v1/models", log, None, 60))
                    urls[name] = f"{base_url}/v1/chat/completions"
                    wait_serving(urls[name])
                for url in urls.values():
                    asyncio.run(drive(url, args.concurrency, args.requests // 4))
                rates: dict[str, list[float]] = {name: [] for name in urls}
                for round_index in range(args.repeats):
                    order = list(urls) if round_index % 2 == 0 else list(reversed(urls))
                    for name in order:
                        outcome = asyncio.run(drive(urls[name], args.concurrency, args.requests))
                        if outcome.failed:
                            raise SystemExit(f"{name}: {outcome.failed} requests failed: {outcome.errors}")
                        rates[name].append(outcome.requests_per_s)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], check=False)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        rounds = ", ".join(f"{value:.0f}" for value in values)
        print(f"{name}: median {medians[name]:.0f} requests/s (rounds: {rounds})")
    print(f"this checkout ÷ base ({args.base}): {medians['this checkout'] / medians['base']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
