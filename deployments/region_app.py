"""One Ray Serve application per region: OpenAI ingress + LLMServer replicas on vLLM.

`serve deploy` configs import `deployments.region_app:build_region_app`. The builder
pins every replica to its region's nodes through the custom Ray resource
`region:<slug>` that those nodes advertise, and adds `GET /status`, which the geo
router and the global loop poll, and the fleet-floor endpoints the global loop sets.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.ingress import make_fastapi_ingress

from deployments.region_ingress import STATUS_ENDPOINTS, RegionIngress, region_app
from deployments.region_server import RegionLLMServer
from meridian_core.cluster_spec import ENV_VAR
from meridian_core.engine_options import TASK_ENGINE_ARGS
from meridian_core.spec import ModelSpec, RegionSpec, SLOSpec, region_resource
from meridian_host import models

# Ray's own resource of a cluster's head node. The ingress (the region's OpenAI routes,
# /status and /fleet-floor) lives there, beside Serve's controller and proxy, so the
# region answers for itself while it has no node: before its first one is bought, and
# after a spot node is taken away, when its capacity report matters most.
HEAD_NODE_RESOURCE = "node:__internal_head__"
HEAD_NODE_SHARE = 0.001
SCALING_POLICY = "autoscaler.live.serve_policy:RegionAutoscalingPolicy"


class RegionAppArgs(BaseModel):
    """The `args` of one region's application in a `serve deploy` config: the spec's own
    sections for that region, as `meridian serve-config` dumps them."""

    model_config = ConfigDict(extra="forbid")

    region: RegionSpec
    models: list[ModelSpec] = Field(min_length=1)
    slo: SLOSpec = SLOSpec()
    max_ongoing_requests: int = Field(default=64, ge=1)
    # SHA-256 of the region's token (what `meridian up` writes), or the environment
    # variable the ingress reads the token itself from (a Kubernetes Secret in its pod's
    # environment, where no digest can be known at render time). Neither: the region is open.
    control_token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    control_token_env: str | None = Field(default=None, pattern=ENV_VAR)

    @model_validator(mode="after")
    def _one_token_source(self) -> RegionAppArgs:
        if self.control_token_sha256 is not None and self.control_token_env is not None:
            raise ValueError("give at most one of control_token_sha256 and control_token_env")
        return self


def deployment_config_for(args: RegionAppArgs) -> dict[str, Any]:
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
            "policy_kwargs": {
                "autoscaling": scaling.model_dump(mode="json"),
                "slo": args.slo.model_dump(mode="json"),
                "profile": args.region.profile,
            },
        },
    }
    return config


def llm_config_for(args: RegionAppArgs, model: ModelSpec, model_path: str) -> LLMConfig:
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
        runtime_env={
            "env_vars": {
                # Setting the KV cache size also stops vLLM CPU from reserving a
                # fraction of the whole NUMA node's memory per engine.
                "VLLM_CPU_KVCACHE_SPACE": str(model.kv_cache_gib),
                "VLLM_CPU_OMP_THREADS_BIND": args.region.engine_cpus or "nobind",
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            }
        },
    )


def build_region_app(args: dict[str, Any]) -> Application:
    parsed = RegionAppArgs.model_validate(args)
    servers: dict[str, Application] = {}
    model_cards = {}
    llm_configs = []
    for model in parsed.models:
        # Runs where Serve builds the app; on one machine that is where replicas run too.
        llm_config = llm_config_for(parsed, model, models.pull(model.source))
        llm_configs.append(llm_config)
        servers[model.id] = build_llm_deployment(llm_config, deployment_cls=RegionLLMServer)
        model_cards[model.id] = to_model_metadata(model.id, llm_config)
    ingress_options = RegionIngress.get_deployment_options(llm_configs)
    ingress_options.pop("autoscaling_config", None)
    ingress_options["num_replicas"] = 1
    ingress_options["ray_actor_options"] = {
        "num_cpus": 0,
        "resources": {HEAD_NODE_RESOURCE: HEAD_NODE_SHARE},
    }
    ingress_cls = make_fastapi_ingress(RegionIngress, endpoint_map=STATUS_ENDPOINTS, app=region_app())
    return serve.deployment(ingress_cls, **ingress_options).bind(
        llm_deployments=servers,
        model_cards=model_cards,
        region=parsed.region.name,
        control_token_sha256=parsed.control_token_sha256,
        control_token_env=parsed.control_token_env,
    )
