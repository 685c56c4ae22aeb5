"""Turn the replicas' cumulative reports into the `RegionSignals` a policy decides on.

Each LLMServer replica reports cumulative counters (deployments/region_server.py).
Differencing them per replica between two decisions gives the interval's arrivals and
tokens whatever Serve's sampling; a replica that appears starts from zero, one that
disappears stops counting. Plain code: the Ray Serve adapter feeds it what the
controller hands over, tests feed it reports they build.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from autoscaler.policy.signals import DemandSample, RegionSignals
from meridian_core.contracts import ReplicaReport


@dataclass(frozen=True)
class ReplicaCounts:
    ready: int
    starting: int
    stopping: int


class ColdStartClock:
    """Measures replica cold starts: from the moment more replicas are wanted than run
    to the moment the running count next rises."""

    def __init__(self, configured_s: float):
        self.last_s = configured_s
        self.measured = False
        self._since: float | None = None
        self._ready = 0

    def observe(self, now_s: float, ready: int, target: int) -> None:
        if ready > self._ready and self._since is not None:
            self.last_s, self.measured = now_s - self._since, True
            self._since = None
        if target > ready and self._since is None:
            self._since = now_s
        elif target <= ready:
            self._since = None
        self._ready = ready


class ReplicaReportTracker:
    def __init__(self, history_s: float):
        self.history_s = history_s
        self._previous: dict[Hashable, tuple[float, ...]] = {}
        self._last_s: float | None = None
        self._demand: deque[DemandSample] = deque()

    def signals(
        self, now_s: float, reports: Mapping[Hashable, ReplicaReport], counts: ReplicaCounts, cold_start_s: float
    ) -> RegionSignals:
        """The region's signals at `now_s`, adding one demand sample since the last call."""
        current = {
            replica: (
                report.arrived_total,
                report.prompt_tokens_total,
                report.output_tokens_total,
                report.first_tokens_total,
            )
            for replica, report in reports.items()
        }
        deltas = [0.0, 0.0, 0.0, 0.0]
        for replica, values in current.items():
            before = self._previous.get(replica, (0.0, 0.0, 0.0, 0.0))
            for i, (now_value, before_value) in enumerate(zip(values, before, strict=True)):
                # A counter that went down belongs to a restarted replica: count afresh.
                deltas[i] += now_value - before_value if now_value >= before_value else now_value
        self._previous = current
        if self._last_s is not None and now_s > self._last_s:
            requests, prompt, output, prefilled = (max(0, round(d)) for d in deltas)
            self._demand.append(DemandSample(self._last_s, now_s - self._last_s, requests, prompt, output, prefilled))
        self._last_s = now_s
        while self._demand and self._demand[0].start_s < now_s - self.history_s:
            self._demand.popleft()
        return RegionSignals(
            now_s=now_s,
            demand=tuple(self._demand),
            ready=counts.ready,
            starting=counts.starting,
            stopping=counts.stopping,
            running=round(sum(r.running for r in reports.values())),
            waiting=round(sum(r.waiting for r in reports.values())),
            kv_usage=_mean([r.kv_cache_usage for r in reports.values()]),
            ttft_ms=_worst_ms([r.ttft_p95_s for r in reports.values()]),
            itl_ms=_worst_ms([r.itl_p95_s for r in reports.values()]),
            cold_start_s=cold_start_s,
        )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _worst_ms(percentiles_s: list[float]) -> float | None:
    """The slowest replica's percentile: an SLO is missed wherever it is missed."""
    observed = [p for p in percentiles_s if p >= 0]
    return max(observed) * 1000.0 if observed else None
