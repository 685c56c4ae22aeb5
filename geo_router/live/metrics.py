"""Prometheus metrics of the router, on a registry of its own (one per app instance)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from geo_router.policy.ratelimit import LIMITS

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "meridian_router_requests",
            "Requests answered by the router, by region, model and HTTP status.",
            ["region", "model", "status"],
            registry=self.registry,
        )
        self.ttfb = Histogram(
            "meridian_router_time_to_first_byte_seconds",
            "Time from request arrival to the first response byte from the region.",
            ["region", "model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.latency = Histogram(
            "meridian_router_request_duration_seconds",
            "Time from request arrival to the last response byte.",
            ["region", "model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.decisions = Counter(
            "meridian_router_routing_decisions",
            "Regions chosen, by the reason they were chosen.",
            ["region", "reason"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "meridian_router_upstream_errors",
            "Failed attempts against a region, by kind (connect, status, stream_broken).",
            ["region", "kind"],
            registry=self.registry,
        )
        self.malformed = Counter(
            "meridian_router_malformed_messages",
            "Messages from regions dropped because they broke their contract (meridian_core/contracts.py).",
            ["contract"],
            registry=self.registry,
        )
        self.region_healthy = Gauge(
            "meridian_router_region_healthy",
            "1 if the router currently sends traffic to the region.",
            ["region"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "meridian_router_in_flight_requests",
            "Requests the router is currently proxying, by region.",
            ["region"],
            registry=self.registry,
        )
        self.background_failures = Counter(
            "meridian_router_background_task_failures",
            "Failures of the router's background work, by task (status_poll: one region's poll).",
            ["task"],
            registry=self.registry,
        )
        self.failovers_refused = Counter(
            "meridian_router_failovers_refused",
            "Failovers not tried because the fleet's retry budget was spent.",
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "meridian_router_region_breaker_open",
            "1 while the region's circuit breaker is open.",
            ["region"],
            registry=self.registry,
        )
        # A breaker opens for `breaker_open_s` (2 s by default), often less than a scrape
        # interval: the gauge alone would miss most openings.
        self.breaker_trips = Counter(
            "meridian_router_region_breaker_trips",
            "Times the region's circuit breaker went from closed to open.",
            ["region"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "meridian_router_rate_limited_requests",
            "Requests refused with 429 by an API key's limit, by the limit that refused them (requests, tokens).",
            ["limit"],
            registry=self.registry,
        )
        self.front_dropped = Counter(
            "meridian_router_front_records_dropped",
            "Access-log lines and spans of the compiled front dropped because the router's Python app "
            "fell behind, by kind (access_log, span).",
            ["kind"],
            registry=self.registry,
        )
        for kind in ("access_log", "span"):  # exported at 0 from the start
            self.front_dropped.labels(kind)
        for task in ("health_poll", "status_poll", "front_records"):  # exported at 0 from the start
            self.background_failures.labels(task)
        for limit in LIMITS:  # exported at 0 from the start, so the first refusal shows in rate()
            self.rate_limited.labels(limit)


# A sample from elsewhere: (sample name, ((label, value), ...), value).
ExtraSample = tuple[str, list[tuple[str, str]], float]
SAMPLE_SUFFIXES = ("", "_total", "_bucket", "_count", "_sum")


class WithSamples:
    """A registry's metrics with samples kept elsewhere (the compiled front's) added in:
    one series per metric and labels, whichever process part counted it."""

    def __init__(self, registry: CollectorRegistry, extra: Callable[[], list[ExtraSample]]):
        self._registry = registry
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        extra: dict[tuple[str, frozenset], tuple[dict[str, str], float]] = {}
        for name, labels, value in self.extra():
            key = (name, frozenset(labels))
            extra[key] = (dict(labels), extra.get(key, ({}, 0.0))[1] + value)
        for family in self._registry.collect():
            merged = []
            for sample in family.samples:
                _, added = extra.pop((sample.name, frozenset(sample.labels.items())), (None, 0.0))
                merged.append(sample._replace(value=sample.value + added) if added else sample)
            names = {family.name + suffix for suffix in SAMPLE_SUFFIXES}
            for key in [key for key in extra if key[0] in names]:
                labels, value = extra.pop(key)
                merged.append(Sample(key[0], labels, value))
            family.samples = merged
            yield family
