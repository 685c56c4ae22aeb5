"""The LLMServer replica of a region's model. It answers the OpenAI API itself: Ray Serve
LLM's direct ingress serves vLLM's own FastAPI app from the replica, behind the region's
token. Its engine's load is readable by the region's control app (/status) and reported
to Ray Serve's autoscaler (autoscaler/live/serve_policy.py reads it there)."""

from __future__ import annotations

import os
from typing import Any

from ray._common.usage.usage_lib import usage_stats_enabled
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer
from starlette.types import ASGIApp

from deployments.client_gone import CancelAsDisconnect
from deployments.engine_stats import EngineCounters, bucket_quantile, read_engine_counters, read_engine_stats
from deployments.region_auth import RegionTokenGuard, region_token_digest
from meridian_core.contracts import NOT_OBSERVED, EngineLoad, ReplicaReport

# The SLO percentile the replicas report (SLOSpec's ttft_p95_ms / itl_p95_ms).
SLO_QUANTILE = 0.95


class RegionLLMServer(LLMServer):
    _last_counters: EngineCounters | None = None

    async def __init__(
        self,
        llm_config: LLMConfig,
        *,
        control_token_sha256: str | None = None,
        control_token_env: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Before the engine starts: a token the args name but the environment lacks stops the replica.
        self._token_digest = region_token_digest(control_token_sha256, control_token_env, os.environ)
        await super().__init__(llm_config, **kwargs)

    async def __serve_build_asgi_app__(self) -> ASGIApp:
        app = await super().__serve_build_asgi_app__()
        # vLLM's build_app builds its middleware stack eagerly; cleared, Starlette rebuilds
        # it with these two outside vLLM's own, the token guard outermost.
        app.middleware_stack = None
        app.add_middleware(CancelAsDisconnect)
        app.add_middleware(RegionTokenGuard, digest=self._token_digest)
        return app

    async def _start_engine(self) -> None:
        """Ray Serve LLM's engine start also pushes a telemetry report through a detached
        actor it creates on the head (about 0.25 GiB). Ray only sends that report with its
        usage stats on; with them off (the spec's `ray.usage_stats`) the engine starts alone."""
        if usage_stats_enabled():
            await super()._start_engine()
        else:
            await self.engine.start()

    async def engine_stats(self) -> dict[str, Any]:
        """This replica's engine load, for the region's /status (an `EngineLoad`)."""
        return _engine_load().model_dump()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve calls this every `metrics_interval_s`. Counters are cumulative for
        this replica, so the controller can difference them whatever its sampling;
        latency percentiles cover the requests since the previous call."""
        load = _engine_load()
        counters = read_engine_counters()
        before = self._last_counters
        self._last_counters = counters
        ttft = bucket_quantile(SLO_QUANTILE, counters.ttft, before.ttft if before else {})
        itl = bucket_quantile(SLO_QUANTILE, counters.itl, before.itl if before else {})
        report = ReplicaReport(
            running=float(load.running),
            waiting=float(load.waiting),
            kv_cache_usage=load.kv_cache_usage,
            # Every request that arrived has finished or is still in the engine.
            arrived_total=float(counters.finished + load.running + load.waiting),
            prompt_tokens_total=float(counters.prompt_tokens),
            output_tokens_total=float(counters.generation_tokens),
            first_tokens_total=counters.first_tokens,
            ttft_p95_s=NOT_OBSERVED if ttft is None else float(ttft),
            itl_p95_s=NOT_OBSERVED if itl is None else float(itl),
        )
        return report.model_dump()


def _engine_load() -> EngineLoad:
    """The engine's gauges as the contract holds them; KV use is summed over the
    replica's engines, so it is capped at full."""
    load = read_engine_stats()
    return EngineLoad(running=load["running"], waiting=load["waiting"], kv_cache_usage=min(1.0, load["kv_cache_usage"]))
