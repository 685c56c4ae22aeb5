"""Replay a request trace against one region's replicas under a scaling policy.

Every `policy.interval_s` (default: every tick) the simulator builds the same
`RegionSignals` the live adapter builds and calls the policy's `decide`; it then starts
replicas (serving nothing for the profile's cold start, but paid for), cancels starting
ones or drains ready ones. Between decisions requests are served with the performance
model of `meridian_core.replica_model`:

- **Assignment**: an arriving request goes to the ready replica with the least
  remaining prefill work (least-loaded; with FCFS prefill on every replica this is
  a central FCFS queue over the replicas). With no ready replica the router holds it
  until one is ready.
- **Prefill**: FCFS per replica, at `prefill_s(prompt, running)`; a request also waits
  while the KV cache cannot hold its prompt + output or the batch is at `max_num_seqs`.
  TTFT = first token − arrival.
- **Decode**: the request's inter-token latency is `itl_s(batch, prefill_share)`: the
  step time at the replica's batch, stretched by the share of engine time its recent
  prefills took (an exponentially decayed busy fraction, `PREFILL_SHARE_TAU_S`).
- **Stopping replicas** take no new requests and are paid for until their last request ends.
  Their queued prefills finish as scheduled; from then on no prefill stretches their steps,
  so the sequences left decode at the step of the shrinking batch, however stretched their
  inter-token latency was when they started.

A request meets the SLO when its TTFT and its mean inter-token latency are both within
target. Requests arriving during the warm-up (all policies start from the same replica
count) and the replica time spent in it are not counted.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoscaler.policy.signals import DemandSample, PolicyState, RegionSignals, ScalingPolicy
from autoscaler.sim.traces import Trace
from meridian_core.replica_model import ReplicaProfile

# Seconds over which a replica's prefill busy time is averaged for its decode slowdown.
PREFILL_SHARE_TAU_S = 10.0
# Window of served requests whose latencies the policy sees as "observed".
OBSERVED_WINDOW_S = 60.0
OBSERVED_QUANTILE = 95.0


@dataclass(frozen=True)
class DemandReplayConfig:
    profile: ReplicaProfile
    slo_ttft_s: float
    slo_itl_s: float
    min_replicas: int = 1
    max_replicas: int = 512
    # Replicas ready at t=0, the same for every policy.
    initial_replicas: int = 1
    tick_s: float = 1.0
    # Demand history handed to the policy, in samples of at most `demand_sample_s`
    # (a sample also ends at every decision, so the history always ends at now).
    history_s: float = 3600.0
    demand_sample_s: float = 5.0
    warmup_s: float = 600.0


@dataclass
class DemandReplayResult:
    policy: str
    setting: str
    slo_attainment: float
    gpu_hours: float
    cost_usd: float
    max_replicas: int
    requests: int
    ttft_p95_s: float
    itl_p95_s: float
    # Per tick, for plots: time, prompt+output tokens/s arriving, replicas paid for, ready.
    times_s: np.ndarray
    demand_tokens_per_s: np.ndarray
    replicas: np.ndarray
    ready: np.ndarray
    # Per tick: requests arriving in it, and how many of them met the SLO (for attainment over time).
    arrivals: np.ndarray | None = None
    met: np.ndarray | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "setting": self.setting,
            "slo_attainment": round(self.slo_attainment, 5),
            "gpu_hours": round(self.gpu_hours, 4),
            "cost_usd": round(self.cost_usd, 2),
            "max_replicas": self.max_replicas,
            "requests": self.requests,
            "ttft_p95_s": round(self.ttft_p95_s, 4),
            "itl_p95_s": round(self.itl_p95_s, 5),
        }


class _Replica:
    __slots__ = (
        "slot",
        "started_at",
        "ready_at",
        "stopped_at",
        "free_at",
        "starts",
        "ends",
        "batch",
        "kv",
        "busy",
        "busy_t",
    )

    def __init__(self, slot: int, started_at: float, ready_at: float) -> None:
        self.slot = slot
        self.started_at = started_at
        self.ready_at = ready_at
        self.stopped_at = math.inf
        self.free_at = ready_at
        # For the load signals at `now`: prefill starts not yet reached, ends not yet reached.
        self.starts: deque[float] = deque()
        self.ends: list[float] = []
        # For scheduling: (end, KV tokens, ITL) of the requests still running at the latest
        # prefill start. Starts only move forward, so this is retired up to each new start.
        self.batch: list[tuple[float, int, float]] = []
        self.kv = 0
        self.busy = 0.0
        self.busy_t = 0.0

    def retire_until(self, now: float) -> None:
        ends = self.ends
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        starts = self.starts
        while starts and starts[0] <= now:
            starts.popleft()

    def schedule_from(self, start: float) -> None:
        batch = self.batch
        while batch and batch[0][0] <= start:
            self.kv -= heapq.heappop(batch)[1]


class _Region:
    """Replicas of one region and request service between decisions."""

    def __init__(self, config: DemandReplayConfig, n_requests: int) -> None:
        self.config = config
        self.profile = config.profile
        self.kv_capacity = config.profile.kv_capacity_tokens
        self.max_num_seqs = config.profile.max_num_seqs
        self.replicas: list[_Replica] = []
        self.ready: list[_Replica] = []
        self.starting: list[_Replica] = []
        self.stopping: list[_Replica] = []
        self.free_at = np.full(16, math.inf)
        self.ttft = np.full(n_requests, math.inf)
        self.itl = np.full(n_requests, math.inf)
        self.first_token = np.full(n_requests, math.inf)
        self.held: deque[int] = deque()

    def _new_replica(self, now: float, ready_at: float) -> _Replica:
        slot = len(self.replicas)
        if slot >= len(self.free_at):
            self.free_at = np.concatenate([self.free_at, np.full(len(self.free_at), math.inf)])
        replica = _Replica(slot, now, ready_at)
        self.replicas.append(replica)
        return replica

    def start(self, now: float, count: int, cold_start_s: float) -> None:
        for _ in range(count):
            replica = self._new_replica(now, now + cold_start_s)
            self.starting.append(replica)

    def start_ready(self, count: int) -> None:
        for _ in range(count):
            replica = self._new_replica(0.0, 0.0)
            self.ready.append(replica)
            self.free_at[replica.slot] = 0.0

    def stop(self, now: float, count: int) -> None:
        # Starting replicas go first (newest first): they hold no requests.
        while count > 0 and self.starting:
            replica = self.starting.pop()
            replica.stopped_at = now
            count -= 1
        if count <= 0:
            return
        # Then the ready replicas with the least queued work; they drain.
        self.ready.sort(key=lambda r: r.free_at)
        for replica in self.ready[:count]:
            self.free_at[replica.slot] = math.inf
            replica.stopped_at = self._drained_at(replica, now)
            self.stopping.append(replica)
        del self.ready[:count]

    def _drained_at(self, replica: _Replica, now: float) -> float:
        """When a replica stopped at `now` ends its last request: once its queued prefills
        are done, each step decodes every sequence left, at the unstretched step of their count."""
        start = max(now, replica.free_at)
        left = sorted((end - start) / itl for end, _, itl in replica.batch if end > start)
        finish, decoded = start, 0.0
        for k, tokens in enumerate(left):
            finish += (tokens - decoded) * self.profile.decode_step_s(len(left) - k)
            decoded = tokens
        return finish

    def advance(self, now: float) -> None:
        became_ready = [r for r in self.starting if r.ready_at <= now]
        if became_ready:
            self.starting = [r for r in self.starting if r.ready_at > now]
            for replica in became_ready:
                replica.free_at = replica.ready_at
                self.free_at[replica.slot] = replica.ready_at
                self.ready.append(replica)
        if self.stopping:
            self.stopping = [r for r in self.stopping if r.stopped_at > now]

    def assign(self, index: int, arrival: float, now: float, prompt: int, output: int) -> None:
        profile = self.profile
        slot = int(self.free_at.argmin())
        replica = self.replicas[slot]
        start = replica.free_at if replica.free_at > now else now
        replica.schedule_from(start)
        batch = replica.batch
        need = prompt + output
        # Wait until the KV cache holds the request and the batch has a free sequence.
        while batch and (replica.kv + need > self.kv_capacity or len(batch) >= self.max_num_seqs):
            end, tokens, _ = heapq.heappop(batch)
            replica.kv -= tokens
            start = max(start, end)
        running = len(batch)
        prefill = profile.prefill_s(prompt, running)
        first = start + prefill
        if start > replica.busy_t:
            replica.busy = replica.busy * math.exp((replica.busy_t - start) / PREFILL_SHARE_TAU_S) + prefill
            replica.busy_t = start
        else:
            replica.busy += prefill
        share = replica.busy / PREFILL_SHARE_TAU_S
        itl = profile.itl_s(running + 1, share if share < 1.0 else 1.0)
        end = first + (output - 1) * itl
        replica.free_at = first
        self.free_at[slot] = first
        replica.starts.append(start)
        heapq.heappush(replica.ends, end)
        heapq.heappush(batch, (end, need, itl))
        replica.kv += need
        self.ttft[index] = first - arrival
        self.itl[index] = itl
        self.first_token[index] = first

    def load(self, now: float) -> tuple[int, int, float]:
        running = waiting = 0
        kv = 0.0
        for replica in self.ready:
            replica.retire_until(now)
            queued = len(replica.starts)
            waiting += queued
            running += len(replica.ends) - queued
            kv += replica.kv / self.kv_capacity
        usage = kv / len(self.ready) if self.ready else 0.0
        return running, waiting + len(self.held), min(usage, 1.0)

    def paid_seconds(self, since: float, until: float) -> float:
        total = 0.0
        for replica in self.replicas:
            begin = max(replica.started_at, since)
            finish = min(replica.stopped_at, until)
            if finish > begin:
                total += finish - begin
        return total


def _observed(region: _Region, lo: int, hi: int, now: float) -> tuple[float | None, float | None]:
    if hi <= lo:
        return None, None
    served = region.first_token[lo:hi] <= now
    if not served.any():
        return None, None
    return _quantile(region.ttft[lo:hi][served]) * 1000.0, _quantile(region.itl[lo:hi][served]) * 1000.0


def _quantile(values: np.ndarray) -> float:
    k = int(OBSERVED_QUANTILE / 100.0 * (len(values) - 1))
    return float(np.partition(values, k)[k])


def simulate(
    trace: Trace,
    policy: ScalingPolicy,
    config: DemandReplayConfig,
    setting: str = "",
    progress: Callable[[float], None] | None = None,
) -> DemandReplayResult:
    """Replay `trace` under `policy`; `progress` gets the fraction of the trace done."""
    tick = config.tick_s
    arrival = trace.arrival_s
    prompt = trace.prompt_tokens
    output = trace.output_tokens
    n = len(trace)
    n_ticks = int(math.floor(trace.duration_s / tick)) + 1
    tick_of = np.minimum((arrival // tick).astype(np.int64), n_ticks - 1)
    bounds = np.searchsorted(tick_of, np.arange(n_ticks + 1), side="left")
    counts = np.diff(bounds)
    prompt_sums = np.bincount(tick_of, weights=prompt, minlength=n_ticks)
    output_sums = np.bincount(tick_of, weights=output, minlength=n_ticks)

    region = _Region(config, n)
    region.start_ready(config.initial_replicas)
    interval = float(getattr(policy, "interval_s", tick))
    history: deque[DemandSample] = deque(maxlen=max(int(config.history_s / tick), 1))
    pending: list = [0.0, 0, 0.0, 0.0]  # start, requests, prompt and output tokens of the open sample
    state: PolicyState = {}
    next_decision = 0.0
    cold_start = config.profile.cold_start_s
    times = np.arange(n_ticks) * tick
    paid = np.zeros(n_ticks, dtype=np.int64)
    ready_series = np.zeros(n_ticks, dtype=np.int64)
    peak = config.initial_replicas
    arrival_list = arrival.tolist()
    prompt_list = prompt.tolist()
    output_list = output.tolist()
    report_every = max(n_ticks // 100, 1)

    for k in range(n_ticks):
        now = k * tick
        region.advance(now)
        while region.held and region.ready:
            i = region.held.popleft()
            region.assign(i, arrival_list[i], now, prompt_list[i], output_list[i])
        if k > 0:
            pending[1:] = [
                pending[1] + int(counts[k - 1]),
                pending[2] + prompt_sums[k - 1],
                pending[3] + output_sums[k - 1],
            ]
        deciding = now + 1e-9 >= next_decision
        if k > 0 and (deciding or now - pending[0] + 1e-9 >= config.demand_sample_s):
            history.append(
                DemandSample(pending[0], now - pending[0], pending[1], int(pending[2]), int(pending[3]), pending[1])
            )
            pending = [now, 0, 0.0, 0.0]
        if deciding:
            next_decision = now + interval
            running, waiting, kv = region.load(now)
            lo = int(np.searchsorted(arrival, now - OBSERVED_WINDOW_S))
            hi = int(bounds[k])
            ttft_ms, itl_ms = _observed(region, lo, hi, now)
            signals = RegionSignals(
                now_s=now,
                demand=tuple(history),
                ready=len(region.ready),
                starting=len(region.starting),
                stopping=len(region.stopping),
                running=running,
                waiting=waiting,
                kv_usage=kv,
                ttft_ms=ttft_ms,
                itl_ms=itl_ms,
                cold_start_s=cold_start,
            )
            decision, state = policy.decide(signals, state)
            target = min(max(decision.target, config.min_replicas), config.max_replicas)
            current = len(region.ready) + len(region.starting)
            if target > current:
                region.start(now, target - current, cold_start)
            elif target < current:
                region.stop(now, current - target)
        for i in range(int(bounds[k]), int(bounds[k + 1])):
            t = arrival_list[i]
            if region.ready:
                region.assign(i, t, t, prompt_list[i], output_list[i])
            else:
                region.held.append(i)
        live = len(region.ready) + len(region.starting) + len(region.stopping)
        paid[k] = live
        ready_series[k] = len(region.ready)
        if k * tick >= config.warmup_s:
            peak = max(peak, live)
        if progress is not None and k % report_every == 0:
            progress(k / n_ticks)

    end_s = n_ticks * tick
    counted = arrival >= config.warmup_s
    if not counted.any():
        counted = np.ones(n, dtype=bool)
    ok = (region.ttft <= config.slo_ttft_s) & (region.itl <= config.slo_itl_s)
    hours = region.paid_seconds(min(config.warmup_s, trace.duration_s), end_s) / 3600.0
    gpu_hours = hours * config.profile.gpus_per_replica
    ttft = region.ttft[counted]
    itl = region.itl[counted]
    tokens_per_s = (prompt_sums + output_sums) / tick
    if progress is not None:
        progress(1.0)
    return DemandReplayResult(
        policy=getattr(policy, "name", type(policy).__name__),
        setting=setting,
        slo_attainment=float(ok[counted].mean()),
        gpu_hours=gpu_hours,
        cost_usd=gpu_hours * config.profile.usd_per_gpu_hour,
        max_replicas=int(peak),
        requests=int(counted.sum()),
        ttft_p95_s=float(np.percentile(ttft, 95)),
        itl_p95_s=float(np.percentile(itl, 95)),
        times_s=times,
        demand_tokens_per_s=tokens_per_s,
        replicas=paid,
        ready=ready_series,
        arrivals=counts,
        met=np.bincount(tick_of, weights=ok, minlength=n_ticks),
    )
