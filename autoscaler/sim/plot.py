"""Demand and replicas over time, one panel per policy (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from autoscaler.sim.demand_replay import DemandReplayResult  # noqa: E402

# Demand is drawn as a moving average over this many ticks, to be readable.
SMOOTH_TICKS = 10
# Attainment over time is the share of the requests arriving in each window of this many ticks.
ATTAINMENT_TICKS = 60


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(values) < width:
        return values
    return np.convolve(values, np.ones(width) / width, mode="same")


def windowed_attainment(result: DemandReplayResult, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(start time of each `width`-tick window, share of its arrivals meeting the SLO; NaN without arrivals)."""
    if result.arrivals is None or result.met is None or not len(result.arrivals):
        return np.zeros(0), np.zeros(0)
    index = np.arange(len(result.arrivals)) // max(width, 1)
    arrived = np.bincount(index, weights=result.arrivals)
    met = np.bincount(index, weights=result.met)
    share = np.full(len(arrived), np.nan)
    np.divide(met, arrived, out=share, where=arrived > 0)
    return result.times_s[:: max(width, 1)][: len(share)], share


def plot_results(results: Sequence[DemandReplayResult], path: Path, title: str) -> Path:
    """Per result: prompt+output tokens/s arriving (left axis) and replicas paid for and
    ready (right axis); below it, when the result has it, the share of each minute's
    arrivals that met the SLO."""
    with_attainment = any(r.met is not None for r in results)
    per = 2 if with_attainment else 1
    rows = max(len(results), 1) * per
    ratios = [3, 1] * (rows // 2) if with_attainment else [1] * rows
    height = sum(2.2 if r == 3 or not with_attainment else 0.8 for r in ratios)
    figure, axes = plt.subplots(
        rows, 1, figsize=(11, height), sharex=True, squeeze=False, gridspec_kw={"height_ratios": ratios}
    )
    for row, result in enumerate(results):
        axis = axes[row * per, 0]
        if with_attainment:
            lower = axes[row * per + 1, 0]
            starts, share = windowed_attainment(result, ATTAINMENT_TICKS)
            lower.step(starts / 60.0, share, where="post", color="tab:green", linewidth=1.0)
            lower.axhline(0.99, color="0.4", linewidth=0.6, linestyle="--")
            lower.set_ylim(min(0.9, float(np.nanmin(share)) if np.isfinite(share).any() else 0.9) - 0.02, 1.01)
            lower.set_ylabel("SLO met\n(per min)", fontsize=7)
            lower.tick_params(labelsize=7)
        minutes = result.times_s / 60.0
        axis.fill_between(minutes, _smooth(result.demand_tokens_per_s, SMOOTH_TICKS), color="0.8", step="mid")
        axis.set_ylabel("tokens/s", fontsize=8)
        replicas = axis.twinx()
        replicas.step(minutes, result.replicas, where="post", color="tab:red", linewidth=1.2, label="paid")
        replicas.step(minutes, result.ready, where="post", color="tab:blue", linewidth=0.8, label="ready")
        replicas.set_ylabel("replicas", fontsize=8)
        replicas.set_ylim(bottom=0)
        axis.set_title(
            f"{result.policy} {result.setting}: SLO {result.slo_attainment:.1%}, {result.gpu_hours:.2f} GPU-h",
            fontsize=9,
        )
        replicas.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("minutes")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
