"""What deployments/model_app.py asks of vLLM for each model in the spec: the task's
runner, the model's engine options, and Meridian's own settings, split by Ray Serve LLM
between vLLM's engine and frontend arguments as it will split them in the replica."""

from __future__ import annotations

import pytest

from meridian.serve_config import serve_config
from meridian_core.engine_options import SET_ELSEWHERE
from meridian_core.spec import parse_spec

TOOLS = {"enable_auto_tool_choice": True, "tool_call_parser": "hermes"}


@pytest.fixture
def model_app_args():
    from deployments.model_app import ModelAppArgs

    spec = parse_spec(
        {
            "models": [
                {"id": "chat", "max_model_len": 2048, "engine_options": TOOLS},
                {"id": "embed", "task": "embed", "max_model_len": 512, "engine_options": {"enforce_eager": True}},
            ],
            "regions": [{"name": "local/us-east", "location": {"lat": 39.0, "lon": -77.5}}],
        }
    )
    _, *model_apps = serve_config(spec, spec.regions[0])["applications"]
    return [ModelAppArgs.model_validate(app["args"]) for app in model_apps]


def llm_configs(model_app_args):
    from deployments.model_app import llm_config_for

    return {args.model.id: llm_config_for(args, f"/models/{args.model.id}") for args in model_app_args}


def test_a_generate_model_runs_as_a_generator_with_its_options(model_app_args):
    config = llm_configs(model_app_args)["chat"]
    assert config.engine_kwargs == {
        "runner": "generate",
        "max_model_len": 2048,
        "disable_log_stats": False,
        **TOOLS,
    }


def test_an_embed_model_runs_as_a_pooling_model_that_embeds(model_app_args):
    config = llm_configs(model_app_args)["embed"]
    assert config.engine_kwargs == {
        "runner": "pooling",
        "convert": "embed",
        "max_model_len": 512,
        "disable_log_stats": False,
        "enforce_eager": True,
    }
    assert config.model_id == "embed"


def test_ray_serve_llm_hands_every_option_to_the_vllm_arguments_that_take_it(model_app_args):
    from ray.llm._internal.serve.engines.vllm.vllm_models import VLLMEngineConfig

    chat = VLLMEngineConfig.from_llm_config(llm_configs(model_app_args)["chat"])
    assert chat.frontend_kwargs == TOOLS
    assert chat.engine_kwargs == {"runner": "generate", "max_model_len": 2048, "disable_log_stats": False}
    embed = VLLMEngineConfig.from_llm_config(llm_configs(model_app_args)["embed"])
    assert (embed.engine_kwargs["runner"], embed.engine_kwargs["convert"], embed.frontend_kwargs) == (
        "pooling",
        "embed",
        {},
    )


def test_what_a_model_app_sets_itself_the_spec_refuses_as_an_option(model_app_args):
    for args in model_app_args:
        config = llm_configs(model_app_args)[args.model.id]
        own = set(config.engine_kwargs) - set(args.model.engine_options)
        assert own <= set(SET_ELSEWHERE), own - set(SET_ELSEWHERE)


def test_the_engine_environment_turns_off_the_compilation_vllm_cannot_load_back(model_app_args, monkeypatch):
    """vLLM reads the setting under this name, and would otherwise compile ahead of time:
    a vLLM that renames it or changes its default fails here, not in slower starts."""
    import vllm.envs

    chat = llm_configs(model_app_args)["chat"]
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    assert vllm.envs.use_aot_compile()
    for name, value in chat.runtime_env["env_vars"].items():
        monkeypatch.setenv(name, value)
    assert not vllm.envs.use_aot_compile()
