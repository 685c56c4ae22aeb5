"""The region's OpenAI ingress, plus `GET /status` for the geo router."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS
from ray.llm._internal.serve.utils.broadcast import broadcast
from ray.serve.handle import DeploymentHandle
from ray.serve.llm.ingress import OpenAiIngress

from autoscaler.live.published import drop_malformed, read_published
from meridian_core.contracts import EngineLoad, MalformedMessage, RegionStatus, ReplicaCounts, ScalingView, parse

log = logging.getLogger(__name__)

STATUS_ENDPOINTS = {**DEFAULT_ENDPOINTS, "status": lambda app: app.get("/status")}
# A replica that does not report within this long counts as not ready; it must be
# well under the router's health-poll timeout so /status itself always answers.
STATS_TIMEOUT_S = 0.5


class RegionIngress(OpenAiIngress):
    def __init__(self, llm_deployments: dict[str, DeploymentHandle], model_cards: dict, *, region: str, **kwargs: Any):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self._region = region
        # One broadcast at a time per model: polls that arrive meanwhile share it.
        self._pending: dict[str, asyncio.Task] = {}
        self._app_name = serve.get_replica_context().app_name

    async def status(self) -> dict[str, Any]:
        per_model = await asyncio.gather(*(self._model_stats(m) for m in self._default_serve_handles))
        replicas = [stats for model_stats in per_model for stats in model_stats]
        scaling = await self._autoscaling()
        status = RegionStatus(
            region=self._region,
            models=sorted(self._default_serve_handles),
            replicas=ReplicaCounts(
                ready=len(replicas),
                starting=max(0, scaling.target - len(replicas)) if scaling else 0,
            ),
            autoscaling=scaling,
            engine=EngineLoad(
                running=sum(r.running for r in replicas),
                waiting=sum(r.waiting for r in replicas),
                kv_cache_usage=max((r.kv_cache_usage for r in replicas), default=0.0),
            ),
            per_replica=replicas,
        )
        return status.model_dump(mode="json")

    async def _autoscaling(self) -> ScalingView | None:
        """The region's last scaling decision (target, reason, measured cold start);
        None for a region with a fixed replica count."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(read_published, self._app_name), STATS_TIMEOUT_S)
        except MalformedMessage as error:
            drop_malformed(error, "region status", log)
            return None
        except Exception as error:  # GCS slow or away: report the load without it
            log.warning("autoscaling view for %s unavailable: %s", self._app_name, error)
            return None

    async def _model_stats(self, model_id: str) -> list[EngineLoad]:
        task = self._pending.get(model_id)
        if task is None or task.done():
            handle = self._default_serve_handles[model_id]
            task = asyncio.ensure_future(asyncio.to_thread(broadcast, handle, "engine_stats"))
            self._pending[model_id] = task
        try:
            answers = list(await asyncio.wait_for(asyncio.shield(task), STATS_TIMEOUT_S))
        except TimeoutError:
            return []
        except Exception as error:  # a replica died mid-call: report what is known, not a 500
            log.warning("engine stats for %s failed: %s", model_id, error)
            return []
        loads = []
        for answer in answers:
            try:
                loads.append(parse(EngineLoad, answer))
            except MalformedMessage as error:
                drop_malformed(error, "region status", log)
        return loads
