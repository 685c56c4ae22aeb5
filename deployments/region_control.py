"""The region's control app: `GET /status` for the geo router and the global loop, and
`PUT`/`DELETE /fleet-floor`, where the global loop sets or lifts the region's replica
floor. Its one replica lives on the head, so the region answers for itself while no
model replica runs. The OpenAI API is not here: each model's replicas serve it
themselves (deployments/model_app.py).

Every request needs the region's token when it has one (deployments/region_auth.py);
without one the floor endpoints are closed and `/status` is open."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from ray import serve
from ray.llm._internal.serve.utils.broadcast import broadcast
from ray.serve.handle import DeploymentHandle

from autoscaler.live.published import drop_malformed, publish_floor, read_capacity, read_floor, read_published
from deployments.region_auth import RegionTokenGuard, refusal, region_token_digest
from deployments.shared_poll import SharedPoll
from meridian_core.contracts import (
    MAX_MESSAGE_BYTES,
    EngineLoad,
    FleetFloor,
    MalformedMessage,
    Message,
    RegionStatus,
    ReplicaCounts,
    parse,
)
from meridian_core.spec import model_app_name

log = logging.getLogger(__name__)

# A poll waits this long for the replicas' load; it must be well under the router's
# health-poll timeout so /status itself always answers.
STATS_TIMEOUT_S = 0.5
# A poll the replicas miss reports their last load while it is younger than this: Serve
# itself gives a replica's health check 30 s before it counts the replica gone.
STATS_KEPT_S = 30.0


class RegionControl:
    def __init__(
        self,
        *,
        region: str,
        models: list[str],
        control_token_sha256: str | None = None,
        control_token_env: str | None = None,
    ):
        self._region = region
        self._models = sorted(models)
        self._control_digest = region_token_digest(control_token_sha256, control_token_env, os.environ)
        self._slug = serve.get_replica_context().app_name
        self._model_handles: dict[str, DeploymentHandle] = {}
        self._engine_loads = SharedPoll(self._broadcast_engine_stats, STATS_TIMEOUT_S, STATS_KEPT_S)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.get("/status")(self.status)
        app.put("/fleet-floor")(self.set_fleet_floor)
        app.delete("/fleet-floor")(self.lift_fleet_floor)
        app.add_middleware(RegionTokenGuard, digest=self._control_digest)
        return app

    async def status(self) -> dict[str, Any]:
        per_model = await asyncio.gather(*(self._model_stats(m) for m in self._models))
        replicas = [stats for model_stats in per_model for stats in model_stats]
        scaling, capacity, floor = await asyncio.gather(
            self._from_kv(read_published), self._from_kv(read_capacity), self._from_kv(read_floor)
        )
        status = RegionStatus(
            region=self._region,
            models=self._models,
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
            capacity=capacity,
            floor=floor,
        )
        return status.model_dump(mode="json")

    async def set_fleet_floor(self, request: Request) -> Response:
        refused = self._without_token()
        if refused is not None:
            return refused
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_MESSAGE_BYTES:
                return refusal(413, "floor too large")
        try:
            floor = parse(FleetFloor, body)
        except MalformedMessage as error:
            drop_malformed(error, "region control", log)
            return refusal(400, str(error))
        return await self._keep_floor(floor)

    async def lift_fleet_floor(self) -> Response:
        return self._without_token() or await self._keep_floor(None)

    def _without_token(self) -> JSONResponse | None:
        """A region with a token had it checked by the app's guard; one without takes no floor."""
        if self._control_digest is None:
            return refusal(403, "this region takes no fleet floor: it has no control token")
        return None

    async def _keep_floor(self, floor: FleetFloor | None) -> Response:
        try:
            await asyncio.wait_for(asyncio.to_thread(publish_floor, self._slug, floor), STATS_TIMEOUT_S * 4)
        except Exception as error:  # GCS slow or away: the global loop sends it again next tick
            log.warning("could not keep the fleet floor of %s: %s", self._slug, error)
            return refusal(503, "the region could not keep the floor; retry")
        return Response(status_code=204)

    async def _from_kv(self, read: Callable[[str], Message | None]) -> Message | None:
        """What the region's loops published in its cluster's KV (autoscaler/live/published.py);
        None when nothing was, when it breaks its contract (logged and counted) or when the GCS
        does not answer in time, so /status always answers with the load it knows."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(read, self._slug), STATS_TIMEOUT_S)
        except MalformedMessage as error:
            drop_malformed(error, "region status", log)
            return None
        except Exception as error:
            log.warning("%s for %s unavailable: %s", read.__name__, self._slug, error)
            return None

    async def _model_stats(self, model_id: str) -> list[EngineLoad]:
        loads = []
        for answer in await self._engine_loads.answers(model_id):
            try:
                loads.append(parse(EngineLoad, answer).model_copy(update={"model": model_id}))
            except MalformedMessage as error:
                drop_malformed(error, "region status", log)
        return loads

    async def _broadcast_engine_stats(self, model_id: str) -> list[Any]:
        return await asyncio.to_thread(self._engine_stats_of, model_id)

    def _engine_stats_of(self, model_id: str) -> list[Any]:
        return list(broadcast(self._model_handle(model_id), "engine_stats"))

    def _model_handle(self, model_id: str) -> DeploymentHandle:
        """The model app's ingress: its LLMServer deployment. Looked up when first asked,
        since the model's app may be deployed after this one; until then the poll fails
        and the model has no replica."""
        handle = self._model_handles.get(model_id)
        if handle is None:
            handle = serve.get_app_handle(model_app_name(self._slug, model_id))
            self._model_handles[model_id] = handle
        return handle
