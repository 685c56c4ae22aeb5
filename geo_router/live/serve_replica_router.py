"""The request router of a region's model app: which replica takes each request, by the
pure policy geo_router/policy/replica_affinity.py.

HAProxy, the region's ingress, hands each request's body to Ray Serve LLM's ingress
request router (`LLMRouter`, wired in deployments/model_app.py); that asks this router for
a replica, and HAProxy forwards the request there.

- **One memory per model app.** Serve runs an `LLMRouter` on every node with a Serve
  replica, and HAProxy takes turns among them, so the policy's memory lives in one actor
  per deployment (`ReplicaAffinityActor`) that every router asks, started at the first
  pick among two or more replicas (with one there is nothing to choose or remember).
- **Prompt blocks** are the geo router's own (`geo_router.live.prompt`): both tiers key a
  prompt alike.
- **Request counts** are Serve's: each candidate's ongoing requests, probed on each pick
  within Serve's probe deadline. A replica that does not answer in time, or is full, is
  passed over while another can take the request.
- **Deadline.** With no valid answer from the actor within `CHOOSE_DEADLINE_S`, the
  replica with the fewest requests takes the request; each such fallback is logged with
  its running count, and the next pick looks the actor up again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from geo_router.live.prompt import prefix_blocks, prompt_text
from geo_router.policy.replica_affinity import ReplicaAffinity, ReplicaAffinityConfig
from meridian_core.contracts import ReplicaPick, parse

logger = logging.getLogger("ray.serve")

CHOOSE_DEADLINE_S = 0.5
ACTOR_NAME = "meridian-replica-affinity"


def request_blocks(pending_request: PendingRequest | None) -> list[int]:
    """The prompt blocks of the body `LLMRouter` passes (a namespace of its fields), or none."""
    if pending_request is None or not pending_request.args:
        return []
    body = pending_request.args[0]
    if not isinstance(body, SimpleNamespace):
        return []
    return list(prefix_blocks(prompt_text(vars(body))))


class SharedAffinity:
    """One deployment's `ReplicaAffinity`, shared by its routers as `ReplicaAffinityActor`,
    on its own clock."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._affinity = ReplicaAffinity(ReplicaAffinityConfig.model_validate(config))

    def choose(self, raw: dict[str, Any]) -> str:
        pick = parse(ReplicaPick, raw)  # a MalformedMessage goes back to the router, which falls back
        self._affinity.retain(pick.replicas)
        return str(self._affinity.choose(pick.requests, pick.blocks, time.monotonic()))


ReplicaAffinityActor = ray.remote(num_cpus=0)(SharedAffinity)


class ReplicaAffinityRouter(RequestRouter):
    def initialize_state(self, **kwargs: Any) -> None:
        self._config = ReplicaAffinityConfig(**kwargs)
        self._shared: ActorHandle | None = None
        self.fallbacks = 0

    def _shared_affinity(self) -> ActorHandle:
        """The app's affinity actor, started by the first router to need it (a model app of
        one replica never does)."""
        if self._shared is None:
            deployment = self._deployment_id
            self._shared = ReplicaAffinityActor.options(
                name=ACTOR_NAME,
                namespace=f"meridian::{deployment.app_name}::{deployment.name}",
                get_if_exists=True,
                lifetime="detached",  # outlives any one router; goes with the region's cluster
            ).remote(self._config.model_dump())
        return self._shared

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if len(candidate_replicas) < 2:
            return [candidate_replicas]  # no choice to make, nothing worth remembering
        probed = await self._probe_queue_lens(candidate_replicas, 0)
        known = {r.replica_id.unique_id: (r, n) for r, n in probed if n is not None}
        with_room = {replica: (r, n) for replica, (r, n) in known.items() if n < r.max_ongoing_requests}
        pool = with_room or known or {r.replica_id.unique_id: (r, 0) for r in candidate_replicas}
        pick = ReplicaPick(
            replicas=[r.replica_id.unique_id for r in candidate_replicas],
            requests={replica: n for replica, (_, n) in pool.items()},
            blocks=request_blocks(pending_request),
        )
        try:
            chosen = await asyncio.wait_for(self._shared_affinity().choose.remote(pick.model_dump()), CHOOSE_DEADLINE_S)
        except Exception as error:  # the actor's memory is an optimisation: the pick goes on without it
            chosen = None
            reason = type(error).__name__
            self._shared = None  # looked up (or started) again by the next pick
        else:
            reason = "an answer naming no candidate"
        if chosen not in pool:
            self.fallbacks += 1
            logger.warning("replica affinity fallback %d (%s): the fewest requests", self.fallbacks, reason)
            chosen = min(pick.requests, key=pick.requests.__getitem__)
        return [[pool[chosen][0]]]
