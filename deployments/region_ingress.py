"""The region's OpenAI ingress, plus `GET /status` for the geo router and the global
loop, and `PUT`/`DELETE /fleet-floor`, where the global loop sets or lifts the region's
replica floor.

A region with a token (its SHA-256 digest is in the app's args, or the token is in
the ingress's environment under the variable the args name) answers nothing without
it: the router and the global loop, which hold it, are the region's only clients.
Without one the floor endpoints are closed and the rest is open (an existing cluster
whose spec names no token)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from ray import serve
from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS, init
from ray.llm._internal.serve.utils.broadcast import broadcast
from ray.serve.handle import DeploymentHandle
from ray.serve.llm.ingress import OpenAiIngress

from autoscaler.live.published import drop_malformed, publish_floor, read_capacity, read_floor, read_published
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
from meridian_host.region_tokens import token_sha256

log = logging.getLogger(__name__)

STATUS_ENDPOINTS = {
    **DEFAULT_ENDPOINTS,
    "status": lambda app: app.get("/status"),
    "set_fleet_floor": lambda app: app.put("/fleet-floor"),
    "lift_fleet_floor": lambda app: app.delete("/fleet-floor"),
}
# A poll waits this long for the replicas' load; it must be well under the router's
# health-poll timeout so /status itself always answers.
STATS_TIMEOUT_S = 0.5
# A poll the replicas miss reports their last load while it is younger than this: Serve
# itself gives a replica's health check 30 s before it counts the replica gone.
STATS_KEPT_S = 30.0


def _refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": status}}, status)


def presents_token(request: Request, digest: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token_sha256(token), digest)


# The ingress replica's token digest, set by RegionIngress.__init__ in the replica's
# process, where the app's middleware runs.
_REGION_TOKEN_DIGEST: dict[str, str | None] = {"sha256": None}


def region_token_digest(sha256: str | None, env_name: str | None, environ: Mapping[str, str]) -> str | None:
    """The digest the ingress checks tokens against. A token the args say is in the
    environment but is not there stops the replica: a region must not start open."""
    if env_name is None:
        return sha256
    token = environ.get(env_name, "")
    if not token:
        raise RuntimeError(f"the region token variable {env_name} is empty or unset in the ingress's environment")
    return token_sha256(token)


async def require_region_token(request: Request, call_next: Callable[[Request], Any]) -> Response:
    # At module level, so the app pickled for the replica refers to this module's
    # digest there rather than carrying a copy.
    digest = _REGION_TOKEN_DIGEST["sha256"]
    if digest is not None and not presents_token(request, digest):
        return _refusal(401, "a valid region token is required")
    return await call_next(request)


def region_app() -> FastAPI:
    """The ingress's FastAPI app: Ray's OpenAI app, refusing any request without the
    region's token when it has one."""
    app = init()
    app.middleware("http")(require_region_token)
    return app


class RegionIngress(OpenAiIngress):
    def __init__(
        self,
        llm_deployments: dict[str, DeploymentHandle],
        model_cards: dict,
        *,
        region: str,
        control_token_sha256: str | None = None,
        control_token_env: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self._region = region
        self._control_digest = region_token_digest(control_token_sha256, control_token_env, os.environ)
        _REGION_TOKEN_DIGEST["sha256"] = self._control_digest
        self._engine_loads = SharedPoll(self._broadcast_engine_stats, STATS_TIMEOUT_S, STATS_KEPT_S)
        self._app_name = serve.get_replica_context().app_name

    async def status(self) -> dict[str, Any]:
        per_model = await asyncio.gather(*(self._model_stats(m) for m in self._default_serve_handles))
        replicas = [stats for model_stats in per_model for stats in model_stats]
        scaling, capacity, floor = await asyncio.gather(
            self._from_kv(read_published), self._from_kv(read_capacity), self._from_kv(read_floor)
        )
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
            capacity=capacity,
            floor=floor,
        )
        return status.model_dump(mode="json")

    async def set_fleet_floor(self, request: Request) -> Response:
        refusal = self._unauthorized(request)
        if refusal is not None:
            return refusal
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_MESSAGE_BYTES:
                return _refusal(413, "floor too large")
        try:
            floor = parse(FleetFloor, body)
        except MalformedMessage as error:
            drop_malformed(error, "region ingress", log)
            return _refusal(400, str(error))
        return await self._keep_floor(floor)

    async def lift_fleet_floor(self, request: Request) -> Response:
        return self._unauthorized(request) or await self._keep_floor(None)

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        if self._control_digest is None:
            return _refusal(403, "this region takes no fleet floor: it has no control token")
        if not presents_token(request, self._control_digest):
            return _refusal(401, "a valid control token is required")
        return None

    async def _keep_floor(self, floor: FleetFloor | None) -> Response:
        try:
            await asyncio.wait_for(asyncio.to_thread(publish_floor, self._app_name, floor), STATS_TIMEOUT_S * 4)
        except Exception as error:  # GCS slow or away: the global loop sends it again next tick
            log.warning("could not keep the fleet floor of %s: %s", self._app_name, error)
            return _refusal(503, "the region could not keep the floor; retry")
        return Response(status_code=204)

    async def _from_kv(self, read: Callable[[str], Message | None]) -> Message | None:
        """What the region's loops published in its cluster's KV (autoscaler/live/published.py);
        None when nothing was, when it breaks its contract (logged and counted) or when the GCS
        does not answer in time, so /status always answers with the load it knows."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(read, self._app_name), STATS_TIMEOUT_S)
        except MalformedMessage as error:
            drop_malformed(error, "region status", log)
            return None
        except Exception as error:
            log.warning("%s for %s unavailable: %s", read.__name__, self._app_name, error)
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
        return list(await asyncio.to_thread(broadcast, self._default_serve_handles[model_id], "engine_stats"))
