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


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(values) < width:
        return values
    return np.convolve(values, np.ones(width) / width, mode="same")


def plot_results(results: Sequence[DemandReplayResult], path: Path, title: str) -> Path:
    """One row per result: prompt+output tokens/s arriving (left axis) and replicas paid
    for and ready (right axis)."""
    rows = max(len(results), 1)
    figure, axes = plt.subplots(rows, 1, figsize=(11, 2.2 * rows), sharex=True, squeeze=False)
    for axis, result in zip(axes[:, 0], results, strict=False):
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
