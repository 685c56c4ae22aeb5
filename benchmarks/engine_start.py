"""How long a vLLM engine takes to start: in the environment Meridian gives its replicas
against vLLM's default one (which is also Ray Serve LLM's: it sets none of them).

Both targets are the same `vllm serve` of the spec's first model, with the same
arguments; only the environment differs: Meridian's is `deployments.model_app.engine_env`,
the default is that minus `VLLM_USE_AOT_COMPILE`. A start is timed from launch to the
first answer of `/v1/models`, and the engine's own "init engine ... took" (profile, KV
cache, warm-up and compilation) is read from its log. Rounds are interleaved, each
measuring both targets once. On a machine that never started this model, round 1 is a
first-ever start for both, its compile caches empty: a region's first replica pays that
once; the later rounds are the starts every replica after it sees.

    .venv/bin/python benchmarks/engine_start.py --repeats 4
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.servers import (  # noqa: E402
    RAW,
    command_line,
    machine,
    metric_table,
    pairwise,
    publish,
    ratio,
    report_header,
    served,
    vllm_serve_command,
)
from deployments.model_app import engine_env  # noqa: E402
from meridian_core.spec import load_spec  # noqa: E402
from meridian_host import models  # noqa: E402

PORT = 28124
AOT_SETTING = "VLLM_USE_AOT_COMPILE"
ENGINE_INIT = re.compile(rb"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s")
TARGETS = [("default", "vLLM's default environment"), ("meridian", "Meridian's engine environment")]


def start_once(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(seconds from launch until /v1/models answers, the engine's own init seconds)."""
    started = time.monotonic()
    with served(command, f"http://127.0.0.1:{PORT}/v1/models", log, env=env):
        ready_s = time.monotonic() - started
    found = ENGINE_INIT.findall(log.read_bytes())
    return ready_s, float(found[-1]) if found else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO / "configs" / "bench.yaml")
    parser.add_argument("--repeats", type=int, default=4, help="rounds; every round starts both targets once")
    args = parser.parse_args()

    spec = load_spec(args.spec)
    region, model = spec.regions[0], spec.models[0]
    meridian_env = engine_env(region, model)
    environments = {"meridian": meridian_env, "default": {k: v for k, v in meridian_env.items() if k != AOT_SETTING}}
    command = vllm_serve_command(models.pull(model.source), model.id, PORT, model.max_model_len)
    started, machine_info = datetime.now(UTC), machine()
    RAW.mkdir(parents=True, exist_ok=True)
    ready: dict[str, list[float]] = {key: [] for key, _ in TARGETS}
    init: dict[str, list[float]] = {key: [] for key, _ in TARGETS}
    for round_index in range(args.repeats):
        for key, name in TARGETS:
            log = RAW / f"engine_start-{key}-{round_index + 1}.log"
            ready_s, init_s = start_once(command, environments[key], log)
            ready[key].append(ready_s)
            init[key].append(init_s)
            print(f"round {round_index + 1} {name}: ready in {ready_s:.1f} s (engine init {init_s:.1f} s)", flush=True)
    machine_info["load_average_1m_end"] = machine()["load_average_1m"]

    ratios = pairwise(ready["meridian"], ready["default"], ratio)
    lines = report_header("vLLM engine start", command_line(), started, machine_info, args.repeats)
    lines += [
        f"- model: {model.id}, `vllm serve` with `--max-model-len {model.max_model_len}`",
        f"- Meridian's engine environment: `{' '.join(f'{k}={v}' for k, v in meridian_env.items())}`;"
        f" the default is the same without `{AOT_SETTING}`",
        "",
        *metric_table(
            "seconds",
            [
                *((f"{name}: launch to /v1/models answering", ready[key], ".1f") for key, name in TARGETS),
                *((f"{name}: vLLM's engine init", init[key], ".1f") for key, name in TARGETS),
            ],
        ),
        "",
        *metric_table("Meridian ÷ default", [("launch to /v1/models answering", ratios, ".2f")]),
        "",
    ]
    publish("engine_start", {"ready_s": ready, "engine_init_s": init, "machine": machine_info}, "\n".join(lines))


if __name__ == "__main__":
    main()
