"""Network round-trip time from great-circle distance, corrected online per region.

Prior: a straight line fitted (ordinary least squares) to the Skyplane inter-region
ping grid (shared/data/network/skyplane_latency_2022.csv, avg_rtt of the 2,256
AWS/GCP premium-tier pairs, joined with shared/data/regions/regions.csv):

    rtt_ms = 27.99 + 0.01495 * distance_km      (R² = 0.685, mean abs. error 34.7 ms)

0.015 ms/km is 1.5× the 0.010 ms/km of a round trip at light speed in fibre, the usual
path inflation of real routes; the intercept is last-mile and queueing cost. The fit is
re-derived by `fit_line` in tests/unit/test_rtt.py whenever shared/ is present.
"""

from __future__ import annotations

from collections.abc import Iterable

RTT_INTERCEPT_MS = 27.99
RTT_MS_PER_KM = 0.01495


def prior_rtt_ms(distance_km: float) -> float:
    return RTT_INTERCEPT_MS + RTT_MS_PER_KM * distance_km


def fit_line(points: Iterable[tuple[float, float]]) -> tuple[float, float, float]:
    """Least-squares (intercept, slope, R²) of y on x."""
    xs, ys = zip(*points, strict=True)
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    return intercept, slope, 1 - ss_res / ss_tot
