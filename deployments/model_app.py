"""One Ray Serve application per model in a region: that model's LLMServer replicas on
vLLM, each answering the OpenAI API itself.

This is Ray Serve LLM's direct ingress: the replica serves vLLM's own FastAPI app
(`LLMServer.__serve_build_asgi_app__`), so a request goes from Serve's proxy (HAProxy in
the high-throughput mode) straight to the replica that runs the engine, with no ingress
replica re-encoding every streamed token between them. In that mode HAProxy first asks
the app's ingress request router (Ray Serve LLM's `LLMRouter`) which replica: the one
holding the prompt's prefix, under a load bound (geo_router/live/serve_replica_router.py).
With no replica running (scaled to zero, or before the first node is bought), Serve's
proxy falls back to its Python proxy, which holds the request in a queue the autoscaler
sees until a replica starts.

`serve deploy` configs import `deployments.model_app:build_model_app`, once for each model,
at `<region endpoint>/models/<model id>` (meridian_core.spec.model_route). Every replica is
pinned to its region's nodes through the custom Ray resource `region:<slug>` they advertise.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from ray import serve
from ray.llm._internal.serve.core.ingress.builder import _build_openai_ingress_request_router
from ray.serve._private.constants import RAY_SERVE_ENABLE_HA_PROXY
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from deployments.region_auth import RegionTokenSource
from deployments.region_server import RegionLLMServer
from meridian_core.engine_options import TASK_ENGINE_ARGS
from meridian_core.spec import ModelSpec, RegionSpec, SLOSpec, region_resource
from meridian_host import models

SCALING_POLICY = "autoscaler.live.serve_policy:RegionAutoscalingPolicy"
# The replica for each request, asked by HAProxy through Ray Serve LLM's ingress request router.
REPLICA_ROUTER = {"request_router_class": "geo_router.live.serve_replica_router:ReplicaAffinityRouter"}


class ModelAppArgs(RegionTokenSource):
    """The `args` of one model's application in a region, as `meridian serve-config` dumps
    them: the spec's own sections for that region and model."""

    region: RegionSpec
    model: ModelSpec
    slo: SLOSpec = SLOSpec()
    max_ongoing_requests: int = Field(default=64, ge=1)


def deployment_config_for(args: ModelAppArgs) -> dict[str, Any]:
    config: dict[str, Any] = {"max_ongoing_requests": args.max_ongoing_requests}
    scaling = args.region.autoscaling
    if scaling is None:
        config["num_replicas"] = args.region.replicas
        return config
    config["autoscaling_config"] = {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "initial_replicas": scaling.initial_replicas,
        # Hysteresis and drain are the policy's; Serve's own delays would add to them.
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 0.0,
        "downscale_to_zero_delay_s": 0.0,
        "metrics_interval_s": 2.0,
        "look_back_period_s": 10.0,
        "policy": {
            "policy_function": SCALING_POLICY,
            # The spec's sections as they are; the policy validates them as the same types.
            # What it publishes (and the floor it reads) are the region's, under its slug.
            "policy_kwargs": {
                "region": args.region.slug,
                "autoscaling": scaling.model_dump(mode="json"),
                "slo": args.slo.model_dump(mode="json"),
                "profile": args.region.profile,
            },
        },
    }
    return config


def most_replicas(region: RegionSpec) -> int:
    return region.autoscaling.max_replicas if region.autoscaling is not None else region.replicas


def llm_config_for(args: ModelAppArgs, model_path: str) -> LLMConfig:
    model = args.model
    return LLMConfig(
        model_loading_config={"model_id": model.id, "model_source": model_path},
        accelerator_config={"kind": "cpu"},
        placement_group_config={
            "bundles": [{"CPU": args.region.cpus_per_replica, region_resource(args.region.slug): 1}]
        },
        deployment_config=deployment_config_for(args),
        # The spec refused engine options that name any of Meridian's own (engine_options.SET_ELSEWHERE).
        engine_kwargs={
            **model.engine_options,
            **TASK_ENGINE_ARGS[model.task],
            "max_model_len": model.max_model_len,
            "disable_log_stats": False,
        },
        # vLLM's own Prometheus logger (not Ray's wrapper) then records into the
        # replica's registry, where RegionLLMServer.engine_stats reads it.
        log_engine_metrics=False,
        runtime_env={"env_vars": engine_env(args.region, model)},
    )


def engine_env(region: RegionSpec, model: ModelSpec) -> dict[str, str]:
    """The environment a replica's vLLM engine starts in."""
    return {
        # Setting the KV cache size also stops vLLM CPU from reserving a
        # fraction of the whole NUMA node's memory per engine.
        "VLLM_CPU_KVCACHE_SPACE": str(model.kv_cache_gib),
        "VLLM_CPU_OMP_THREADS_BIND": region.engine_cpus or "nobind",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        # vLLM 0.32 saves an ahead-of-time compiled model that it cannot load back on
        # CPU ("'function' object has no attribute 'finalize_loading'"), so every start
        # compiled the model again. Without it, a start after the first one is served
        # from Inductor's own cache (benchmarks/engine_start.py).
        "VLLM_USE_AOT_COMPILE": "0",
    }


def build_model_app(args: dict[str, Any]) -> Application:
    parsed = ModelAppArgs.model_validate(args)
    # Runs where Serve builds the app; on one machine that is where replicas run too.
    llm_config = llm_config_for(parsed, models.pull(parsed.model.source))
    # Under HAProxy a replica router needs an ingress request router, which HAProxy asks
    # for each request's replica: a hop that costs CPU beside the engine, so only for an app
    # that may run two replicas. Serve's Python proxy (the other mode) would hand the
    # router no prompt, so there Serve's default router picks.
    choose_replica = RAY_SERVE_ENABLE_HA_PROXY and most_replicas(parsed.region) > 1
    if choose_replica:
        llm_config.deployment_config["request_router_config"] = REPLICA_ROUTER
    app = build_llm_deployment(
        llm_config,
        deployment_cls=serve.ingress()(RegionLLMServer),
        bind_kwargs={
            "control_token_sha256": parsed.control_token_sha256,
            "control_token_env": parsed.control_token_env,
        },
    )
    if not choose_replica:
        return app
    return app._with_ingress_request_router(_build_openai_ingress_request_router(server=app, llm_config=llm_config))
