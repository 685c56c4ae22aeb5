"""Read a vLLM engine's load from the Prometheus registry of the process that runs it.

vLLM's PrometheusStatLogger records scheduler state into prometheus_client's registry
on every engine step; these are its documented metric names.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"  # a fraction in [0, 1], despite the name


def read_engine_stats(registry: CollectorRegistry = REGISTRY) -> dict[str, Any]:
    totals = {RUNNING: 0.0, WAITING: 0.0, KV_CACHE_USAGE: 0.0}
    seen = False
    for family in registry.collect():
        if family.name in totals:
            seen = True
            for sample in family.samples:
                if sample.name == family.name:
                    totals[family.name] += sample.value
    return {
        "engine_metrics": seen,
        "running": int(totals[RUNNING]),
        "waiting": int(totals[WAITING]),
        "kv_cache_usage": round(totals[KV_CACHE_USAGE], 4),
    }
