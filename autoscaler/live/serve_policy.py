"""Meridian's scaling policy as a Ray Serve custom autoscaling policy.

Serve's controller instantiates `RegionAutoscalingPolicy(**policy_kwargs)` once per
deployment and calls it on every control-loop tick with an `AutoscalingContext`.
Every `decision_interval_s` this adapter turns the replicas' reports into
`RegionSignals`, asks the pure policy (autoscaler/policy/slo_policy.py, the same code the
simulator runs) for a target, and publishes the target and its reason in Ray's
internal KV, one entry per model, whose sum the region's `/status` reads for the router
and `meridian status`, and its capacity loop for nodes. Serve's own delays are set to
zero in the deployment's config (see deployments/region_app.py), so hysteresis is the
policy's alone.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from dataclasses import replace
from typing import Any

from autoscaler.live.published import drop_malformed, publish, read_floor, read_views
from autoscaler.live.replica_reports import ColdStartClock, ReplicaCounts, ReplicaReportTracker
from autoscaler.policy.region_view import model_floor
from autoscaler.policy.signals import ScalingDecision
from autoscaler.policy.slo_policy import SloPolicy, SloPolicyConfig
from meridian_core.contracts import MAX_REASON, MalformedMessage, ReplicaReport, ScalingView, parse
from meridian_core.replica_model import PROFILES
from meridian_core.spec import AutoscalingSpec, SLOSpec

# Under Serve's logger, which the controller writes to its log file: each change of target
# with its reason sits there beside Serve's own scaling lines.
log = logging.getLogger("ray.serve.meridian")
# Decisions whose arrivals count as "recent" for where the fleet keeps replicas warm.
RECENT_SAMPLES = 60
REPORT_FIELDS = frozenset(ReplicaReport.model_fields)


def latest_reports(raw_metrics: Mapping[str, Mapping[Hashable, list]] | None) -> dict[Hashable, ReplicaReport]:
    """Per replica, the newest value of every metric it reported, as its `ReplicaReport`;
    a replica whose report breaks the contract is left out (logged and counted).

    Metrics that are not the report's fields are Serve's own, not the replica's: under
    Serve's high-throughput mode every replica also pushes `running_requests`. A replica
    that reported none of the report's fields yet is left out, not read as idle."""
    newest: dict[Hashable, dict[str, float]] = {}
    for name, per_replica in (raw_metrics or {}).items():
        if name not in REPORT_FIELDS:
            continue
        for replica, series in per_replica.items():
            if series:
                newest.setdefault(replica, {})[name] = max(series, key=lambda point: point.timestamp).value
    reports: dict[Hashable, ReplicaReport] = {}
    for replica, values in newest.items():
        try:
            reports[replica] = parse(ReplicaReport, values)
        except MalformedMessage as error:
            drop_malformed(error, "autoscaler", log)
    return reports


def model_of(deployment_name: str) -> str:
    """The model a Serve LLM deployment serves: its name is `<server class>:<model id>`."""
    return deployment_name.rpartition(":")[2]


class RegionAutoscalingPolicy:
    def __init__(
        self,
        *,
        region: str,
        autoscaling: dict[str, Any],
        slo: dict[str, Any],
        profile: str,
        decision_interval_s: float = 5.0,
        history_s: float = 1800.0,
    ):
        # The spec's sections as the Serve config carries them, read back as the same types;
        # `profile` is the region's, by name. `region` is its slug: each model is an app of
        # its own, and the region's models publish and share its floor under it.
        self._region = region
        scaling = AutoscalingSpec.model_validate(autoscaling)
        self.decision_interval_s = decision_interval_s
        self._min_replicas = scaling.min_replicas
        self._max_replicas = scaling.max_replicas
        self._policy = SloPolicy(
            SloPolicyConfig(
                autoscaling=scaling,
                slo=SLOSpec.model_validate(slo),
                profile=PROFILES[profile],
                interval_s=decision_interval_s,
            )
        )
        self._tracker = ReplicaReportTracker(history_s)
        self._cold_start = ColdStartClock(scaling.cold_start_s)
        self._last_decision_s: float | None = None
        self._decision = ScalingDecision(0, "starting")

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        now = ctx.current_time
        ready = ctx.current_num_replicas
        self._cold_start.observe(now, ready, ctx.target_num_replicas)
        if self._last_decision_s is not None and now - self._last_decision_s < self.decision_interval_s:
            return ctx.target_num_replicas, ctx.policy_state
        self._last_decision_s = now
        counts = ReplicaCounts(
            ready=ready,
            starting=max(0, ctx.target_num_replicas - ready),
            stopping=max(0, ready - ctx.target_num_replicas),
        )
        signals = self._tracker.signals(now, latest_reports(ctx.raw_metrics), counts, self._cold_start.last_s)
        # Serve's own counts, which do not wait for a replica's next report. Requests its
        # handles hold for a replica wait too: at zero replicas, those HAProxy handed to the
        # fallback proxy, which no replica reports; the policy wakes for them. Requests at a
        # replica run, even one that has not reported them yet; the policy keeps it for them.
        queued = round(ctx.total_queued_requests or 0)
        at_replicas = max(round(ctx.total_num_requests or 0) - queued, 0)
        signals = replace(signals, waiting=signals.waiting + queued, running=max(signals.running, at_replicas))
        own, state = self._policy.decide(signals, dict(ctx.policy_state.get("meridian", {})))
        model = model_of(ctx.deployment_name)
        own_view = ScalingView(
            target=own.target,
            own_target=own.target,
            reason=own.reason[:MAX_REASON],
            ready=counts.ready,
            starting=counts.starting,
            cold_start_s=round(self._cold_start.last_s, 1),
            cold_start_measured=self._cold_start.measured,
            min_replicas=self._min_replicas,
            max_replicas=self._max_replicas,
            recent_requests=sum(sample.requests for sample in signals.demand[-RECENT_SAMPLES:]),
            at=float(now),
        )
        decision = self._with_floor(model, own_view)
        if decision.target != self._decision.target:  # a reason's figures move every decision; the target seldom
            log.info("autoscale %s %s: %d -> %d (%s)", self._region, model, ready, decision.target, decision.reason)
        self._decision = decision
        view = own_view.model_copy(update={"target": decision.target, "reason": decision.reason[:MAX_REASON]})
        try:
            publish(self._region, model, view)
        except Exception as error:  # the decision stands even if nobody can read it
            log.warning("could not publish the autoscaling decision: %s", error)
        return decision.target, {**ctx.policy_state, "meridian": state}

    def _with_floor(self, model: str, own: ScalingView) -> ScalingDecision:
        """The global loop's floor wins over a lower target (autoscaler/policy/fleet_floors.py).
        The floor is the region's, over all its models; this model takes its share of it."""
        decision = ScalingDecision(own.own_target, own.reason)
        try:
            floor = read_floor(self._region)
            if floor is None or floor.replicas <= own.own_target:
                return decision
            share = model_floor(floor.replicas, model, {**read_views(self._region), model: own})
        except MalformedMessage as error:
            drop_malformed(error, "autoscaler", log)
            return decision
        except Exception as error:  # GCS away: the region's own decision stands
            log.warning("could not read the fleet floor: %s", error)
            return decision
        if share <= own.own_target:
            return decision
        return ScalingDecision(min(share, self._max_replicas), floor.reason)
