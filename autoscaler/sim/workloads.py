"""The autoscaling evaluation suite: every workload the policy is judged on, built from the
real traces in `../shared/data` and from seeded synthetic families. Pure functions over
`traces.Trace`; nothing here knows about any policy.

Transforms (each with known-answer tests in tests/unit/test_autoscale_workloads.py):

- `traces.superpose(trace, k)`: k copies, copy j shifted by j/k of the trace's period and
  wrapped; k times the rate over the same span, each copy keeping the trace's burstiness.
- `time_warp(trace, shape, span_s)`: moves every arrival t to F⁻¹(t / D) · span_s, where F is
  the normalised cumulative of the rate `shape` over [0, 1]. Order, count and tokens are kept;
  the local rate becomes the trace's own rate times `shape` (a real trace's bursts, modulated).
- `step_surge(trace, base, peak, start_s, end_s)`: `base` superposed copies outside
  [start_s, end_s), `peak` copies inside it: the rate steps from base× to peak× and back.
- `poisson(...)`: Poisson arrivals with lognormal prompt and output lengths of given means.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autoscaler.sim import traces
from autoscaler.sim.traces import Trace
from meridian_core.shared_data import AZURE_CODE_TRACE, MOONCAKE_TRACE

Shape = Callable[[np.ndarray], np.ndarray]
# Points on [0, 1] at which a warp's rate shape is integrated.
WARP_GRID = 4097


class WorkloadSpec(BaseModel):
    """One workload of the suite: its name, how it was made (one line), and what it needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    how: str = Field(min_length=1)
    needs: tuple[str, ...] = ()  # trace files it is built from ("azure", "mooncake")


class WorkloadInfo(BaseModel):
    """A built workload's size, for reports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    requests: int
    duration_min: float
    mean_prompt: float
    mean_output: float
    mean_rps: float


def info(name: str, trace: Trace) -> WorkloadInfo:
    return WorkloadInfo(
        name=name,
        requests=len(trace),
        duration_min=trace.duration_s / 60.0,
        mean_prompt=float(trace.prompt_tokens.mean()) if len(trace) else 0.0,
        mean_output=float(trace.output_tokens.mean()) if len(trace) else 0.0,
        mean_rps=len(trace) / trace.duration_s if trace.duration_s > 0 else 0.0,
    )


# ---------------------------------------------------------------- transforms


def merge(*parts: Trace) -> Trace:
    """All requests of `parts` on one time axis (each part's own times, not re-based)."""
    if not parts:
        raise ValueError("nothing to merge")
    arrival = np.concatenate([p.arrival_s for p in parts])
    order = np.argsort(arrival, kind="stable")
    return Trace(
        arrival_s=arrival[order],
        prompt_tokens=np.concatenate([p.prompt_tokens for p in parts])[order],
        output_tokens=np.concatenate([p.output_tokens for p in parts])[order],
    )


def window(trace: Trace, start_s: float, end_s: float) -> Trace:
    """The requests arriving in [start_s, end_s), times kept."""
    keep = (trace.arrival_s >= start_s) & (trace.arrival_s < end_s)
    return Trace(trace.arrival_s[keep], trace.prompt_tokens[keep], trace.output_tokens[keep])


def time_warp(trace: Trace, shape: Shape, span_s: float | None = None) -> Trace:
    """Arrival t → F⁻¹(t / D) · span_s, F the normalised integral of `shape` (≥ 0, not all
    zero) over [0, 1] and D the trace's duration: the first and last arrivals map to 0 and
    span_s (default D), order and tokens are kept, and the rate is multiplied by `shape`."""
    duration = trace.duration_s
    span = duration if span_s is None else span_s
    if duration <= 0 or len(trace) < 2:
        return trace
    grid = np.linspace(0.0, 1.0, WARP_GRID)
    rate = np.asarray(shape(grid), dtype=np.float64)
    if (rate < 0).any() or not (rate > 0).any():
        raise ValueError("a warp's rate shape must be non-negative and not all zero")
    cumulative = np.concatenate(([0.0], np.cumsum((rate[1:] + rate[:-1]) / 2.0)))
    cumulative /= cumulative[-1]
    # F is non-decreasing; interpolating its inverse keeps order (ties stay in place).
    warped = np.interp(trace.arrival_s / duration, cumulative, grid) * span
    return Trace(np.maximum.accumulate(warped), trace.prompt_tokens.copy(), trace.output_tokens.copy())


def step_surge(trace: Trace, base: int, peak: int, start_s: float, end_s: float) -> Trace:
    """`base` superposed copies outside [start_s, end_s) and `peak` copies inside it."""
    if not 1 <= base <= peak:
        raise ValueError("need 1 <= base <= peak")
    low, high = traces.superpose(trace, base), traces.superpose(trace, peak)
    outside = ~((low.arrival_s >= start_s) & (low.arrival_s < end_s))
    before = Trace(low.arrival_s[outside], low.prompt_tokens[outside], low.output_tokens[outside])
    return merge(before, window(high, start_s, end_s))


def diurnal(low: float, high: float, cycles: float = 1.0) -> Shape:
    """Rate shape starting at its trough `low`, rising to `high` and back, `cycles` times."""
    return lambda x: low + (high - low) * 0.5 * (1.0 - np.cos(2.0 * np.pi * cycles * x))


def trough(depth: float, start: float, end: float, edge: float = 0.02) -> Shape:
    """Rate 1, falling to `depth` over [start, end] (fractions of the span), with linear
    edges `edge` long so the shape stays continuous."""

    def shape(x: np.ndarray) -> np.ndarray:
        down = np.clip((x - start) / edge, 0.0, 1.0)
        up = np.clip((end - x) / edge, 0.0, 1.0)
        return 1.0 - (1.0 - depth) * np.minimum(down, up)

    return shape


def poisson(rate: float, seconds: float, prompt: float, output: float, seed: int, sigma: float = 1.0) -> Trace:
    """Poisson arrivals at `rate`/s for `seconds`; prompt and output lengths lognormal with
    means `prompt` and `output` (log-sd `sigma`), prompts clipped to [1, 8000], outputs to
    [1, 4000]."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds * 1.2) + 100))
    arrivals = arrivals[arrivals < seconds]
    mu_shift = sigma**2 / 2.0
    prompts = rng.lognormal(np.log(prompt) - mu_shift, sigma, len(arrivals)).astype(np.int64).clip(1, 8000)
    outputs = rng.lognormal(np.log(output) - mu_shift, sigma, len(arrivals)).astype(np.int64).clip(1, 4000)
    return traces.from_arrays(arrivals, prompts, outputs)


# ---------------------------------------------------------------- the suite

HOUR_S = 3600.0
# The real-trace-derived shapes below sit on the Azure code trace at this many copies:
# enough load that several replicas are needed, so scaling has room to matter.
DERIVED_BASE = 20

SUITE: tuple[WorkloadSpec, ...] = (
    *(
        WorkloadSpec(
            name=f"azure-code-{k}x",
            how="Azure 2023 code trace as recorded"
            if k == 1
            else f"Azure 2023 code trace, {k} copies superposed (copy j shifted by j/{k} of its span, wrapped)",
            needs=("azure",),
        )
        for k in (1, 10, 100)
    ),
    *(
        WorkloadSpec(
            name=f"mooncake-{k}x",
            how="Mooncake FAST'25 conversation trace as recorded"
            if k == 1
            else f"Mooncake FAST'25 conversation trace, {k} copies superposed (copy j shifted by j/{k}, wrapped)",
            needs=("mooncake",),
        )
        for k in (1, 10, 100)
    ),
    WorkloadSpec(
        name="decode-heavy",
        how="Poisson 20 req/s for 1 h, lognormal prompts mean 256 and outputs mean 1,024 tokens "
        "before clipping to 8,000 / 4,000 (log-sd 1, seed 16)",
    ),
    WorkloadSpec(
        name="decode-mixed",
        how="Poisson 40 req/s for 1 h, lognormal prompts mean 1,024 and outputs mean 256 tokens "
        "before clipping to 8,000 / 4,000 (log-sd 1, seed 17)",
    ),
    WorkloadSpec(
        name="step-surge",
        how=f"Azure code trace, {DERIVED_BASE} copies superposed, {3 * DERIVED_BASE} copies in minutes 25–40 "
        "(a 3× step up and back down, each copy shifted and wrapped)",
        needs=("azure",),
    ),
    WorkloadSpec(
        name="diurnal-ramp",
        how=f"Azure code trace, {DERIVED_BASE} copies superposed, time-warped over 2 h (the trace played twice, "
        "end to end) so its rate follows one day's shape from a trough of 0.25× to a peak of 1.75× and back",
        needs=("azure",),
    ),
    WorkloadSpec(
        name="trough",
        how="Azure code trace, 30 copies superposed, time-warped over its hour so the rate drops to 5% "
        "in minutes 20–40 (linear 1.2-min edges) and is correspondingly higher outside",
        needs=("azure",),
    ),
)
NAMES = tuple(spec.name for spec in SUITE)


def tile(trace: Trace, times: int) -> Trace:
    """The trace played `times` times end to end, each copy one period after the last."""
    period = trace.duration_s + trace.duration_s / max(len(trace) - 1, 1)
    return merge(*(Trace(trace.arrival_s + j * period, trace.prompt_tokens, trace.output_tokens) for j in range(times)))


def build(name: str, azure_path: Path = AZURE_CODE_TRACE, mooncake_path: Path = MOONCAKE_TRACE) -> Trace:
    """The named workload of `SUITE`, deterministic (fixed seeds, no clock)."""
    loaded: dict[str, Trace] = {}

    def azure() -> Trace:
        if "azure" not in loaded:
            loaded["azure"] = traces.load(azure_path, "azure")
        return loaded["azure"]

    def mooncake() -> Trace:
        if "mooncake" not in loaded:
            loaded["mooncake"] = traces.load(mooncake_path, "mooncake")
        return loaded["mooncake"]

    for k in (1, 10, 100):
        if name == f"azure-code-{k}x":
            return traces.superpose(azure(), k)
        if name == f"mooncake-{k}x":
            return traces.superpose(mooncake(), k)
    if name == "decode-heavy":
        return poisson(20.0, HOUR_S, 256, 1024, seed=16)
    if name == "decode-mixed":
        return poisson(40.0, HOUR_S, 1024, 256, seed=17)
    if name == "step-surge":
        return step_surge(azure(), DERIVED_BASE, 3 * DERIVED_BASE, 25 * 60.0, 40 * 60.0)
    if name == "diurnal-ramp":
        two_hours = tile(traces.superpose(azure(), DERIVED_BASE), 2)
        return time_warp(two_hours, diurnal(0.25, 1.75), span_s=2 * HOUR_S)
    if name == "trough":
        return time_warp(traces.superpose(azure(), 30), trough(0.05, 20 / 60, 40 / 60), span_s=HOUR_S)
    raise ValueError(f"unknown workload {name!r}; expected one of {', '.join(NAMES)}")


def spec(name: str) -> WorkloadSpec:
    for candidate in SUITE:
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown workload {name!r}; expected one of {', '.join(NAMES)}")
