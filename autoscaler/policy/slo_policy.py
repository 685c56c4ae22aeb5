"""Meridian's SLO-aware scaling policy for one (model, region). Pure: signals and the
previous state in, a replica target with its reason and the next state out.

Each decision:

1. **Demand** — request rate and mean prompt/output tokens from the recent arrivals,
   binned into `bin_s` bins.
2. **Forecast over the next cold start** — replicas asked for now are ready one cold
   start later, so the plan covers the horizon `cold_start_s + interval_s` with the
   largest of: the short- and long-window rates; a linear trend over `trend_window_s`
   extrapolated to the end of the horizon (rising only); and, when the history has a
   clear period (autocorrelation ≥ `season_min_corr`), the peak rate (smoothed over
   `short_window_s`) one period ago over the same horizon, so a periodic surge is met by
   replicas started a cold start before it.
3. **Capacity** — the fewest replicas whose planned TTFT and ITL meet the SLO at the
   `attainment` quantile (`autoscaler.policy.slo_capacity`: Erlang-C queueing of prefill,
   decode batch by Little's law at its fixed point, KV cache), multiplied by a correction
   that steps up, once a cold start, while the observed p95 TTFT or ITL breaks the SLO
   with every planned replica ready (a shorter breach is a burst that is over before new
   replicas are ready), by a step squared with each step in a row, and steps down only
   with clear headroom, never below the level that followed one that proved too low
   (`_correct`).
   Requests the router holds with no replica ready force at least one replica. A backlog
   (requests waiting) is work no forecast of arrivals counts: when the ready replicas
   cannot prefill it within the TTFT target, what the replicas beyond the steady plan's
   will not clear within the horizon gets replicas of its own.
   Bursts are sized separately, as a fluid (`slo_capacity.fluid_replicas_needed`): the
   recorded arrivals are replayed through the fleet's pooled prefill queue, and the count
   is the fewest that keeps `attainment` of them within the TTFT target, over the spec's
   `burst_window_s` and over the last `recent_burst_window_s` (a 99% over a long window
   leaves its newest, highest bursts to the 1%). While the level rises (an exponential
   trend that clears its own noise and still holds over the last `growth_recent_s`),
   bursts recorded earlier are replayed grown to the level a cold start ahead. Traffic is
   far burstier than Poisson at the scale of a TTFT, the SLO counts requests, and a burst
   is over before any cold start, so standing capacity must already carry the backlog
   the bursts recent requests arrived in build.
4. **Scale-down with hysteresis** — scale-up is immediate; the target is the largest
   desired count over the last `scale_down_after_s` (unset: one cold start — an
   idle replica is kept as long as restarting it would cost, the ski-rental break-even),
   and the simulator/adapter drains the replicas it stops. A policy with no state yet
   (a new or restarted controller) counts the replicas running as desired now, so a
   running fleet is not dropped before the policy has a window of demand.
5. **Scale to zero** — with `min_replicas` 0, after `idle_to_zero_s` without arrivals.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autoscaler.policy.signals import DemandSample, PolicyState, RegionSignals, ScalingDecision
from autoscaler.policy.slo_capacity import Workload, fluid_replicas_needed, replicas_needed
from meridian_core.replica_model import ReplicaProfile
from meridian_core.spec import AutoscalingSpec, SLOSpec


class SloPolicyConfig(BaseModel):
    """The spec's own sections for one region, and the policy's internal tuning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    autoscaling: AutoscalingSpec
    slo: SLOSpec
    profile: ReplicaProfile
    # Fraction of requests the capacity plan keeps within both targets.
    attainment: float = Field(default=0.99, gt=0.5, lt=1)
    interval_s: float = Field(default=5.0, gt=0)
    # Bursts are replayed over the spec's burst window and over this recent one: a 99%
    # over a long window leaves the newest (highest) bursts to the 1%.
    recent_burst_window_s: float = Field(default=300.0, gt=0)
    # A rising level scales recorded bursts to the level ahead (`_level_growth`).
    growth_bin_s: float = Field(default=60.0, gt=0)
    growth_recent_s: float = Field(default=600.0, gt=0)
    growth_confidence: float = Field(default=1.5, ge=0)
    growth_max: float = Field(default=1.5, ge=1)
    bin_s: float = Field(default=10.0, gt=0)
    short_window_s: float = Field(default=30.0, gt=0)
    long_window_s: float = Field(default=120.0, gt=0)
    trend_window_s: float = Field(default=300.0, gt=0)
    season_min_corr: float = Field(default=0.6, gt=0, le=1)
    season_min_period_s: float = Field(default=60.0, gt=0)
    # A breach that outlasts a cold start steps the correction up by `correction_step`,
    # squared with every step in a row that still finds the count too low, up to the max.
    correction_step: float = Field(default=1.1, gt=1)
    correction_step_max: float = Field(default=1.5, gt=1)
    correction_max: float = Field(default=3.0, ge=1)
    correction_decay: float = Field(default=0.97, gt=0, lt=1)
    # The correction is lowered only while both observed p95s are within this fraction
    # of their targets: met, but close, holds it.
    correction_release: float = Field(default=0.85, gt=0, lt=1)
    # A correction that proved too low is not decayed back below the level that
    # followed it; that floor fades with this half-life (the workload's mix may change).
    correction_floor_half_life_s: float = Field(default=3600.0, gt=0)


def _bins(demand: tuple[DemandSample, ...], now: float, bin_s: float) -> np.ndarray:
    """Arrivals per bin, oldest first, ending at `now`: rows (requests, prompt, output, prefilled)."""
    if not demand:
        return np.zeros((0, 4))
    n = len(demand)
    starts = np.fromiter((s.start_s for s in demand), np.float64, n)
    values = np.empty((n, 4))
    values[:, 0] = np.fromiter((s.requests for s in demand), np.float64, n)
    values[:, 1] = np.fromiter((s.prompt_tokens for s in demand), np.float64, n)
    values[:, 2] = np.fromiter((s.output_tokens for s in demand), np.float64, n)
    values[:, 3] = np.fromiter((s.prefilled for s in demand), np.float64, n)
    count = max(int(math.ceil((now - starts[0]) / bin_s - 1e-9)), 1)
    index = count - 1 - ((now - starts - 1e-9) // bin_s).astype(np.int64)
    keep = index >= 0
    out = np.zeros((count, 4))
    np.add.at(out, index[keep], values[keep])
    return out


def _season_forecast(
    rates: np.ndarray, horizon_bins: int, min_lag: int, min_corr: float, smooth_bins: int
) -> tuple[float, int]:
    """Peak rate over the horizon one period ago, averaged over `smooth_bins` (a burst
    shorter than that is the fluid's to size), and the period in bins (0 when none is clear)."""
    n = len(rates)
    if n < 2 * min_lag + horizon_bins:
        return 0.0, 0
    centred = rates - rates.mean()
    power = float(centred @ centred)
    if power <= 0:
        return 0.0, 0
    lags = np.arange(min_lag, n // 2 + 1)
    if not len(lags):
        return 0.0, 0
    full = np.correlate(centred, centred, mode="full")[n - 1 :]
    corr = full[lags] / power * n / (n - lags)
    pick = int(np.argmax(corr))
    best_lag = int(lags[pick]) if corr[pick] >= min_corr else 0
    if not best_lag:
        return 0.0, 0
    start = n - best_lag
    smoothed = np.convolve(rates, np.ones(smooth_bins) / smooth_bins, mode="valid")
    window = smoothed[max(start - smooth_bins + 1, 0) : start + horizon_bins + 1]
    return float(window.max()) if len(window) else 0.0, best_lag


def _level_growth(
    durations: np.ndarray,
    counts: np.ndarray,
    ahead_s: float,
    bin_s: float,
    recent_s: float,
    confidence: float,
    most: float,
) -> np.ndarray:
    """Per sample, how much the arrival rate will have grown from then to `ahead_s` past
    the last sample, by the exponential trend of the rate in `bin_s` bins: the slope's
    lower bound `confidence` standard errors down, so only growth the data bears out
    counts, and no steeper than the trend of the last `recent_s`. At least 1 (a falling
    level keeps its bursts), at most `most`."""
    ends = np.cumsum(durations)
    growth = np.ones(len(durations))
    bins = int(ends[-1] // bin_s) if len(ends) else 0
    if bins < 3:
        return growth
    index = np.minimum((ends - 1e-9) // bin_s, bins - 1).astype(np.int64)
    rates = np.bincount(index, weights=counts, minlength=bins) / bin_s
    if (rates <= 0).any():
        return growth
    times = (np.arange(bins) + 0.5) * bin_s
    (slope, _), covariance = np.polyfit(times, np.log(rates), 1, cov=True)
    slope = float(slope) - confidence * math.sqrt(max(float(covariance[0, 0]), 0.0))
    # Still rising now: a climb out of a trough that has since levelled off is no growth.
    recent = max(int(recent_s // bin_s), 3)
    if bins > recent:
        slope = min(slope, float(np.polyfit(times[-recent:], np.log(rates[-recent:]), 1)[0]))
    if slope <= 0:
        return growth
    return np.minimum(np.exp(slope * (ends[-1] + ahead_s - (ends - durations / 2))), most)


class SloPolicy:
    name = "meridian"

    def __init__(self, config: SloPolicyConfig) -> None:
        self.config = config
        self.interval_s = config.interval_s

    def decide(self, signals: RegionSignals, state: PolicyState) -> tuple[ScalingDecision, PolicyState]:
        config = self.config
        scaling = config.autoscaling
        slo_ttft_s, slo_itl_s = config.slo.ttft_p95_ms / 1000.0, config.slo.itl_p95_ms / 1000.0
        now = signals.now_s
        bins = _bins(signals.demand, now, config.bin_s)
        rates = bins[:, 0] / config.bin_s

        last_arrival = state.get("last_arrival", now)
        for sample in reversed(signals.demand):
            if sample.requests:
                last_arrival = max(last_arrival, sample.start_s + sample.duration_s)
                break

        def window_rate(seconds: float) -> float:
            n = max(int(round(seconds / config.bin_s)), 1)
            return float(bins[-n:, 0].sum()) / (min(n, len(bins)) * config.bin_s) if len(bins) else 0.0

        short = window_rate(config.short_window_s)
        long = window_rate(config.long_window_s)
        horizon = signals.cold_start_s + config.interval_s
        horizon_bins = max(int(math.ceil(horizon / config.bin_s)), 1)

        trend = 0.0
        trend_n = min(int(round(config.trend_window_s / config.bin_s)), len(rates))
        if trend_n >= 3:
            y = rates[-trend_n:]
            x = np.arange(trend_n, dtype=np.float64)
            slope, intercept = np.polyfit(x, y, 1)
            if slope > 0:
                trend = float(intercept + slope * (trend_n - 1 + horizon_bins))

        season, period = _season_forecast(
            rates,
            horizon_bins,
            max(int(config.season_min_period_s / config.bin_s), 2),
            config.season_min_corr,
            max(int(round(config.short_window_s / config.bin_s)), 1),
        )
        candidates = {"short": short, "long": long, "trend": trend, "season": season}
        source = max(candidates, key=lambda key: candidates[key])
        forecast = candidates[source]

        sized = bins[-max(int(round(config.long_window_s / config.bin_s)), 1) :]
        if sized[:, 3].sum() == 0:
            sized = bins
        prefilled = float(sized[:, 3].sum())
        prompt_mean = float(sized[:, 1].sum()) / prefilled if prefilled else state.get("prompt_mean", 0.0)
        output_mean = float(sized[:, 2].sum()) / prefilled if prefilled else state.get("output_mean", 0.0)

        needed = replicas_needed(
            config.profile,
            Workload(forecast, max(prompt_mean, 1.0), max(output_mean, 1.0)),
            slo_ttft_s,
            slo_itl_s,
            config.attainment,
            scaling.max_replicas,
        )

        # Bursts, as a fluid: replay the recent arrivals through the fleet's pooled prefill
        # queue, over the burst window and over the recent one, their level grown to the one ahead.
        service_s = config.profile.prefill_s(max(prompt_mean, 1.0), 1.0)
        burst_demand = [sample for sample in signals.demand if sample.start_s >= now - scaling.burst_window_s]
        starts = np.fromiter((sample.start_s for sample in burst_demand), np.float64, len(burst_demand))
        durations = np.fromiter((sample.duration_s for sample in burst_demand), np.float64, len(burst_demand))
        counts = np.fromiter((sample.requests for sample in burst_demand), np.float64, len(burst_demand))
        tokens = np.fromiter((sample.prompt_tokens for sample in burst_demand), np.float64, len(burst_demand))
        tokens *= _level_growth(
            durations,
            counts,
            horizon,
            config.growth_bin_s,
            config.growth_recent_s,
            config.growth_confidence,
            config.growth_max,
        )
        burst_needed, burst_span_s = 0, 0.0
        for span_s in (scaling.burst_window_s, config.recent_burst_window_s) if slo_ttft_s > service_s else ():
            first = int(np.searchsorted(starts, now - span_s))
            replicas = fluid_replicas_needed(
                durations[first:],
                counts[first:],
                tokens[first:],
                max(prompt_mean, 1.0) / service_s,
                slo_ttft_s - service_s,
                config.attainment,
                scaling.max_replicas,
            )
            if replicas > burst_needed:
                burst_needed, burst_span_s = replicas, span_s
        steady_needed = needed
        if burst_needed > needed:
            needed = burst_needed
            source = "burst"

        corrected = self._correct(signals, state)
        correction = corrected["correction"]
        # A backlog is work no forecast of arrivals counts. What the ready replicas beyond
        # the steady demand's (prefill and decode) will not clear within one horizon gets
        # replicas of its own.
        spare = max(signals.ready - steady_needed * correction, 0.0)
        backlog = max(signals.waiting * service_s / horizon - spare, 0.0)
        if signals.waiting * service_s <= max(signals.ready, 1) * (slo_ttft_s - service_s):
            backlog = 0.0  # the queue prefills within the TTFT target: the plan's headroom
        planned = math.ceil(needed * correction - 1e-9)
        desired = math.ceil(needed * correction + backlog - 1e-9)
        if signals.waiting > 0 and signals.ready == 0:
            desired = max(desired, 1)
        if source == "burst":
            reason = (
                f"bursts of the last {burst_span_s:.0f} s replayed × {prompt_mean:.0f}+{output_mean:.0f} tok → {needed}"
            )
        else:
            reason = (
                f"{source} forecast {forecast:.2f} req/s × {prompt_mean:.0f}+{output_mean:.0f} tok"
                f" over {horizon:.0f} s → {needed}"
            )
        if correction > 1.0:
            reason += f" × {correction:.2f} (observed SLO breach)"
        if backlog > 0:
            reason += f" + {backlog:.1f} for {signals.waiting} waiting"
        if period:
            reason += f"; period {period * config.bin_s:.0f} s"

        hold_s = signals.cold_start_s if scaling.scale_down_after_s is None else scaling.scale_down_after_s
        # A fresh policy (a restarted controller) does not know why the fleet has its size: it
        # holds what is running for one scale-down window rather than drop it on an empty history.
        opening = [[now, signals.ready + signals.starting]]
        recent = [entry for entry in state.get("recent", opening) if entry[0] > now - hold_s]
        recent.append([now, desired])
        target = max(entry[1] for entry in recent)
        if target > desired:
            reason += f"; holding {target} for the {hold_s:.0f} s scale-down window"

        # Requests in the region, waiting or running, whatever the arrivals counted so far
        # (a replica reports those it took a moment later).
        in_region = signals.waiting + signals.running
        if scaling.min_replicas == 0 and now - last_arrival >= scaling.idle_to_zero_s and in_region == 0:
            target = 0
            reason = f"idle {now - last_arrival:.0f} s ≥ {scaling.idle_to_zero_s:.0f} s: scale to zero"
        elif scaling.min_replicas == 0 and target == 0 and in_region > 0:
            target = 1
            reason += f"; kept at 1 for {in_region} request(s) in the region"
        elif scaling.min_replicas == 0 and target == 0 and now - last_arrival < scaling.idle_to_zero_s:
            target = 1
            reason += f"; kept at 1 until {scaling.idle_to_zero_s:.0f} s idle"
        target = min(max(target, scaling.min_replicas), scaling.max_replicas)

        new_state: PolicyState = {
            "last_arrival": last_arrival,
            "recent": recent,
            "target": target,
            "planned": planned,
            "prompt_mean": prompt_mean,
            "output_mean": output_mean,
            **corrected,
        }
        return ScalingDecision(target, reason), new_state

    def _correct(self, signals: RegionSignals, state: PolicyState) -> PolicyState:
        """The multiplier on the capacity model's count, learned from observed SLO breaches,
        with the state it keeps: the correction, when the current breach began, the floor
        and when it was set, and how many steps in a row found the count still too low.

        A breach shorter than a cold start is over before new replicas could help (a
        burst); one that outlasts it means the capacity model is off: the correction steps
        up, and the next step waits another cold start, for the replicas it added to be
        ready and show their effect. Steps in a row square the step each time (1.1, 1.21,
        1.46, within `correction_step_max`): a near miss costs one small step, a model
        far off is caught in a few. It steps down only with clear headroom (both p95s
        within `correction_release` of their targets), never below the level that
        followed one that proved too low (that floor fading over hours), and holds
        otherwise: a steady demand settles on a steady count instead of cycling between
        too few and too many.
        """
        config, now = self.config, signals.now_s
        slo = config.slo
        correction = float(state.get("correction", 1.0))
        streak = int(state.get("correction_streak", 0))
        floor, floor_at = float(state.get("correction_floor", 1.0)), float(state.get("correction_floor_at", now))
        floor = 1.0 + (floor - 1.0) * 0.5 ** ((now - floor_at) / config.correction_floor_half_life_s)
        ttft, itl = signals.ttft_ms, signals.itl_ms
        breached = (ttft is not None and ttft > slo.ttft_p95_ms) or (itl is not None and itl > slo.itl_p95_ms)
        breach_since = state.get("breach_since") if breached else None
        if breached and breach_since is None:
            breach_since = now
        # A breach while the replicas planned are still starting is theirs, not the model's.
        if signals.ready < int(state.get("planned", state.get("target", 0))):
            breach_since = None
        elif breach_since is not None and now - breach_since >= signals.cold_start_s:
            step = min(config.correction_step ** (2**streak), config.correction_step_max)
            correction = min(correction * step, config.correction_max)
            floor, breach_since, streak = correction, now, streak + 1
        elif not breached:
            streak = 0
            release = config.correction_release
            if (ttft is None or ttft <= release * slo.ttft_p95_ms) and (itl is None or itl <= release * slo.itl_p95_ms):
                correction = max(floor, 1.0, correction * config.correction_decay)
        return {
            "correction": correction,
            "breach_since": breach_since,
            "correction_streak": streak,
            "correction_floor": floor,
            "correction_floor_at": now,
        }
