"""Read a vLLM engine's load from the Prometheus registry of the process that runs it.

vLLM's PrometheusStatLogger records scheduler state into prometheus_client's registry
on every engine step; these are its documented metric names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"  # a fraction in [0, 1], despite the name
FINISHED = "vllm:request_success"
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"

Buckets = dict[float, float]  # upper bound -> cumulative count


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


@dataclass(frozen=True)
class EngineCounters:
    """Cumulative since the engine started (summed over its engines)."""

    finished: float
    prompt_tokens: float
    generation_tokens: float
    ttft: Buckets
    itl: Buckets

    @property
    def first_tokens(self) -> float:
        """Requests that reached their first token: the TTFT histogram's count."""
        return self.ttft.get(float("inf"), 0.0)


def read_engine_counters(registry: CollectorRegistry = REGISTRY) -> EngineCounters:
    counters = {FINISHED: 0.0, PROMPT_TOKENS: 0.0, GENERATION_TOKENS: 0.0}
    histograms: dict[str, Buckets] = {TTFT: {}, ITL: {}}
    for family in registry.collect():
        if family.name in counters:
            counters[family.name] += sum(s.value for s in family.samples if s.name == f"{family.name}_total")
        elif family.name in histograms:
            buckets = histograms[family.name]
            for sample in family.samples:
                if sample.name == f"{family.name}_bucket":
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return EngineCounters(
        counters[FINISHED], counters[PROMPT_TOKENS], counters[GENERATION_TOKENS], histograms[TTFT], histograms[ITL]
    )


def bucket_quantile(q: float, now: Buckets, before: Buckets) -> float | None:
    """The q-quantile of the observations between two snapshots of a cumulative
    histogram, interpolated linearly within a bucket as Prometheus's histogram_quantile
    does; None when nothing was observed in between."""
    bounds = sorted(now)
    counts = [now[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound
