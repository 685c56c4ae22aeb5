"""Peer autoscalers, re-implemented from their published sources with their defaults,
behind Meridian's `ScalingPolicy` interface so the simulator can replay them.

Each is a reimplementation of the documented behaviour, not a copy of the code.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.policy.signals import PolicyState, RegionSignals, ScalingDecision

_EPS = 1e-6


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=512, ge=1)


def _clamp(value: int, config: _Config) -> int:
    return min(max(value, config.min_replicas), config.max_replicas)


def _window(samples: list[list[float]], now: float, window_s: float) -> list[list[float]]:
    return [s for s in samples if s[0] > now - window_s - _EPS]


class RayServeConfig(_Config):
    """Ray Serve `AutoscalingConfig` defaults (ray/serve/config.py, ray 2.60)."""

    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    downscale_to_zero_delay_s: float | None = Field(default=None, ge=0)
    look_back_period_s: float = Field(default=30.0, gt=0)
    upscaling_factor: float = Field(default=1.0, gt=0)
    downscaling_factor: float = Field(default=1.0, gt=0)
    # Serve's controller loop runs every 0.1 s, but replicas push their metrics every
    # 10 s and the decision is a look-back average; deciding every second is equivalent.
    interval_s: float = Field(default=1.0, gt=0)


class RayServeDefault:
    """Ray Serve's default `replica_queue_length_autoscaling_policy`
    (ray/serve/autoscaling_policy.py, ray 2.60):

    - total ongoing requests (at replicas + queued in handles), averaged (mean) over
      `look_back_period_s`;
    - desired = current · total / (target_ongoing_requests · current), then the scaling
      factor moves `factor` of the way from current to desired, rounded up (a downscale
      stuck at the current count is forced one lower);
    - from zero running replicas with requests waiting, scale straight to
      max(ceil(upscaling_factor), target) with no delay;
    - otherwise a change in one direction must persist for `upscale_delay_s` (30 s) or
      `downscale_delay_s` (600 s) of wall-clock time before the target moves; downscaling
      never goes below 1 except 1 → 0 (with `downscale_to_zero_delay_s` if set).
    """

    name = "ray-serve"

    def __init__(self, config: RayServeConfig) -> None:
        self.config = config
        self.interval_s = config.interval_s

    def decide(self, signals: RegionSignals, state: PolicyState) -> tuple[ScalingDecision, PolicyState]:
        config = self.config
        now = signals.now_s
        samples = _window(state.get("samples", []), now, config.look_back_period_s)
        samples.append([now, float(signals.running + signals.waiting)])
        total = sum(s[1] for s in samples) / len(samples)
        target = int(state.get("target", signals.ready + signals.starting))
        current = signals.ready
        new_state: PolicyState = {"samples": samples, "target": target}
        direction = int(state.get("direction", 0))
        since = state.get("since")

        if current == 0:
            if total > 0:
                wanted = _clamp(max(math.ceil(config.upscaling_factor), target), config)
                new_state["target"] = wanted
                return ScalingDecision(wanted, f"cold start: {total:.1f} requests waiting"), new_state
            return ScalingDecision(target, "no running replicas, no requests"), new_state

        desired = total / config.target_ongoing_requests
        factor = config.upscaling_factor if desired > current else config.downscaling_factor
        scaled = math.ceil(current + factor * (desired - current))
        if math.ceil(desired) < current and scaled == current:
            scaled -= 1
        scaled = _clamp(max(scaled, 0), config)

        if scaled > target:
            if direction < 0 or since is None:
                since = now
            direction = 1
            if now - since + _EPS >= config.upscale_delay_s:
                target, direction, since = scaled, 0, None
            reason = f"{total:.1f} ongoing / {config.target_ongoing_requests:g} → {scaled} (upscale delay)"
        elif scaled < target:
            if direction > 0 or since is None:
                since = now
            direction = -1
            to_zero = target == 1
            delay = config.downscale_delay_s
            if to_zero and config.downscale_to_zero_delay_s is not None:
                delay = config.downscale_to_zero_delay_s
            floor = 0 if to_zero else 1
            if now - since + _EPS >= delay:
                target, direction, since = _clamp(max(scaled, floor), config), 0, None
            reason = f"{total:.1f} ongoing / {config.target_ongoing_requests:g} → {scaled} (downscale delay)"
        else:
            direction, since = 0, None
            reason = f"{total:.1f} ongoing at target"
        new_state.update(target=target, direction=direction, since=since)
        return ScalingDecision(target, reason), new_state


class SkyServeConfig(_Config):
    """SkyServe `RequestRateAutoscaler` defaults (sky/serve/constants.py and autoscalers.py)."""

    target_qps_per_replica: float = Field(default=1.0, gt=0)
    qps_window_s: float = Field(default=60.0, gt=0)
    interval_s: float = Field(default=20.0, gt=0)
    upscale_delay_s: float = Field(default=300.0, ge=0)
    downscale_delay_s: float = Field(default=1200.0, ge=0)


class SkyServeRequestRate:
    """SkyServe's `RequestRateAutoscaler` (skypilot-org/skypilot, sky/serve/autoscalers.py):

    - every 20 s (AUTOSCALER_DEFAULT_DECISION_INTERVAL_SECONDS), QPS = requests in the
      last 60 s (AUTOSCALER_QPS_WINDOW_SIZE_SECONDS) / 60;
    - desired = ceil(QPS / target_qps_per_replica), clipped to [min, max];
    - `_set_target_num_replicas_with_hysteresis`: with a target of 0 the desired count
      is taken at once; otherwise the desired count must be above (below) the target for
      int(upscale_delay / interval) = 15 (int(downscale_delay / interval) = 60)
      consecutive decisions before it is taken; a decision the other way, or an equal
      one, resets the counters.
    """

    name = "skyserve"

    def __init__(self, config: SkyServeConfig) -> None:
        self.config = config
        self.interval_s = config.interval_s
        self.up_threshold = int(config.upscale_delay_s / config.interval_s)
        self.down_threshold = int(config.downscale_delay_s / config.interval_s)

    def decide(self, signals: RegionSignals, state: PolicyState) -> tuple[ScalingDecision, PolicyState]:
        config = self.config
        now = signals.now_s
        requests = sum(s.requests for s in signals.demand if s.start_s >= now - config.qps_window_s - _EPS)
        qps = requests / config.qps_window_s
        desired = _clamp(math.ceil(qps / config.target_qps_per_replica - _EPS), config)
        target = int(state.get("target", signals.ready + signals.starting))
        up = int(state.get("up", 0))
        down = int(state.get("down", 0))
        if target == 0:
            target = desired
        elif desired > target:
            up, down = up + 1, 0
            if up >= self.up_threshold:
                up, target = 0, desired
        elif desired < target:
            down, up = down + 1, 0
            if down >= self.down_threshold:
                down, target = 0, desired
        else:
            up = down = 0
        reason = f"qps {qps:.2f} / {config.target_qps_per_replica:g} → {desired} (up {up}, down {down})"
        return ScalingDecision(target, reason), {"target": target, "up": up, "down": down}


class KnativeConfig(_Config):
    """Knative Serving KPA defaults (config-autoscaler: container-concurrency-target-default
    100, container-concurrency-target-percentage 70, stable-window 60s,
    panic-window-percentage 10, panic-threshold-percentage 200, max-scale-up-rate 1000,
    max-scale-down-rate 2, scale-to-zero-grace-period 30s; tick interval 2 s)."""

    concurrency_target: float = Field(default=100.0, gt=0)
    target_utilization: float = Field(default=0.7, gt=0, le=1)
    stable_window_s: float = Field(default=60.0, gt=0)
    panic_window_s: float = Field(default=6.0, gt=0)
    panic_threshold: float = Field(default=2.0, gt=0)
    max_scale_up_rate: float = Field(default=1000.0, gt=1)
    max_scale_down_rate: float = Field(default=2.0, gt=1)
    scale_to_zero_grace_s: float = Field(default=30.0, ge=0)
    interval_s: float = Field(default=2.0, gt=0)


class KnativeKPA:
    """Knative's Pod Autoscaler (knative/serving, pkg/autoscaler/scaling/autoscaler.go,
    `Scale`):

    - observed concurrency (in flight at the pods, incl. queued in queue-proxy, plus
      requests the activator buffers) averaged over the 60 s stable and 6 s panic windows;
    - desired stable/panic pods = ceil(observed / (target · utilisation)), each kept in
      [floor(ready / max_scale_down_rate), ceil(max_scale_up_rate · ready)] (ready ≥ 1);
    - panic starts when desired panic pods / ready ≥ panic threshold (200%), is extended
      while over it, and ends a stable window after the last time over it; in panic the
      count never decreases (max of stable, panic and the panic high-water mark);
    - scaling to zero waits the scale-to-zero grace period.
    """

    name = "knative-kpa"

    def __init__(self, config: KnativeConfig) -> None:
        self.config = config
        self.interval_s = config.interval_s

    def decide(self, signals: RegionSignals, state: PolicyState) -> tuple[ScalingDecision, PolicyState]:
        config = self.config
        now = signals.now_s
        samples = _window(state.get("samples", []), now, config.stable_window_s)
        samples.append([now, float(signals.running + signals.waiting)])
        stable = sum(s[1] for s in samples) / len(samples)
        recent = [s[1] for s in samples if s[0] > now - config.panic_window_s - _EPS]
        panic_value = sum(recent) / len(recent)
        ready = max(1, signals.ready)
        target_value = config.concurrency_target * config.target_utilization
        max_up = math.ceil(config.max_scale_up_rate * ready)
        max_down = math.floor(ready / config.max_scale_down_rate)
        stable_pods = int(min(max(math.ceil(stable / target_value - _EPS), max_down), max_up))
        panic_pods = int(min(max(math.ceil(panic_value / target_value - _EPS), max_down), max_up))
        over = math.ceil(panic_value / target_value - _EPS) / ready >= config.panic_threshold

        panic_time = state.get("panic_time")
        max_panic = int(state.get("max_panic", 0))
        if over:
            panic_time = now
        elif panic_time is not None and panic_time + config.stable_window_s < now:
            panic_time, max_panic = None, 0

        desired = stable_pods
        mode = "stable"
        if panic_time is not None:
            mode = "panic"
            desired = max(desired, panic_pods, max_panic)
            max_panic = desired

        zero_since = state.get("zero_since")
        if desired == 0:
            zero_since = now if zero_since is None else zero_since
            if now - zero_since + _EPS < config.scale_to_zero_grace_s:
                desired = 1
        else:
            zero_since = None
        desired = _clamp(desired, config)
        reason = f"{mode}: concurrency stable {stable:.1f} panic {panic_value:.1f} / {target_value:g} → {desired}"
        new_state: PolicyState = {
            "samples": samples,
            "panic_time": panic_time,
            "max_panic": max_panic,
            "zero_since": zero_since,
        }
        return ScalingDecision(desired, reason), new_state


class StaticConfig(_Config):
    replicas: int = Field(ge=0)


class StaticPeak:
    """Static provisioning: a fixed count sized for the peak, never changed."""

    name = "static"

    def __init__(self, config: StaticConfig) -> None:
        self.config = config
        self.interval_s = 60.0

    def decide(self, signals: RegionSignals, state: PolicyState) -> tuple[ScalingDecision, PolicyState]:
        return ScalingDecision(self.config.replicas, "static"), state
