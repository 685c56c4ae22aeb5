"""A model's task and engine options in the spec: checked at load against vLLM's own
arguments (the generated table, which must match the installed vLLM), each bad option
named by its path."""

from __future__ import annotations

import datetime

import pytest

from deployments.vllm_args_table import TABLE_PATH, argument_kinds, installed_vllm_version, render
from meridian_core.engine_options import MAX_DEPTH, MAX_ITEMS, MAX_OPTIONS, MAX_STRING_CHARS, SET_ELSEWHERE
from meridian_core.spec import ModelSpec, SpecError, parse_spec
from meridian_core.vllm_args import VLLM_ARGS

REGENERATE = ".venv/bin/python -m deployments.vllm_args_table"


def spec_data(**model: object) -> dict:
    return {
        "models": [{"id": "smol", **model}],
        "regions": [{"name": "local/us-east", "location": {"lat": 39.0, "lon": -77.5}}],
    }


def refusal(**model: object) -> str:
    with pytest.raises(SpecError) as error:
        parse_spec(spec_data(**model), origin="spec.yaml")
    return str(error.value)


def test_the_table_is_the_installed_vllms():
    assert TABLE_PATH.read_text() == render(installed_vllm_version(), argument_kinds()), (
        f"meridian_core/vllm_args.py is not the installed vLLM's; regenerate it: {REGENERATE}"
    )


def test_the_table_holds_both_engine_and_frontend_arguments():
    # AsyncEngineArgs' and FrontendArgs', the two Ray Serve LLM splits engine_kwargs into.
    assert VLLM_ARGS["enforce_eager"] == ("bool",)
    assert VLLM_ARGS["max_num_seqs"] == ("int", "null")
    assert VLLM_ARGS["enable_auto_tool_choice"] == ("bool",)
    assert VLLM_ARGS["tool_call_parser"] == ("str", "null")
    assert VLLM_ARGS["compilation_config"] == ("dict",)  # a config class, built from its fields
    assert not any(name.startswith("_") for name in VLLM_ARGS)


def test_a_model_generates_unless_it_says_it_embeds():
    spec = parse_spec(spec_data())
    assert (spec.models[0].task, spec.models[0].engine_options) == ("generate", {})
    assert parse_spec(spec_data(task="embed")).models[0].task == "embed"
    assert "models.0.task: Input should be 'generate' or 'embed'" in refusal(task="classify")


def test_engine_options_that_vllm_takes_load_as_given():
    options = {
        "enable_auto_tool_choice": True,
        "tool_call_parser": "hermes",
        "max_num_seqs": 8,
        "tool_parser_plugin": "",
        "cpu_offload_gb": 1,  # an int where vLLM takes a float
        "chat_template": None,
        "allowed_origins": ["https://example.com"],
        "override_generation_config": {"temperature": 0.5, "stop": ["</s>"]},
    }
    assert parse_spec(spec_data(engine_options=options)).models[0].engine_options == options


def test_an_unknown_option_is_named_with_the_likely_one():
    message = refusal(engine_options={"tool_call_parsr": "hermes", "zqxv": 1})
    assert (
        "  models.0.engine_options.tool_call_parsr: not a vLLM engine argument (did you mean tool_call_parser?)"
        in message.splitlines()
    )
    assert "  models.0.engine_options.zqxv: not a vLLM engine argument" in message.splitlines()


@pytest.mark.parametrize(
    "option, instead",
    [
        ("max_model_len", "the model's `max_model_len`"),
        ("runner", "the model's `task`"),
        ("convert", "the model's `task`"),
        ("model", "the model's `source`"),
        ("served_model_name", "the model's `id`"),
        ("kv_cache_memory_bytes", "the model's `kv_cache_gib`"),
        ("disable_log_stats", "/status reads the engine's stats"),
        ("distributed_executor_backend", "Ray Serve LLM"),
    ],
)
def test_an_option_meridian_sets_is_refused_naming_what_sets_it(option, instead):
    message = refusal(engine_options={option: "x"})
    assert f"models.0.engine_options.{option}: not an engine option here" in message
    assert instead in message


def test_every_option_meridian_sets_is_a_vllm_argument():
    assert set(SET_ELSEWHERE) <= set(VLLM_ARGS)


@pytest.mark.parametrize(
    "value, words",
    [
        ("yes", "vLLM takes bool here, not str"),
        (1, "vLLM takes bool here, not int"),
        ([True], "vLLM takes bool here, not list"),
        (datetime.date(2025, 1, 1), "a date is not a JSON value"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused(value, words):
    assert f"models.0.engine_options.enforce_eager: {words}" in refusal(engine_options={"enforce_eager": value})


def test_a_bool_is_not_taken_for_a_number():
    assert "max_num_seqs: vLLM takes int or null here, not bool" in refusal(engine_options={"max_num_seqs": True})


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("chat_template", "x" * (MAX_STRING_CHARS + 1), f"strings are at most {MAX_STRING_CHARS} characters"),
        ("allowed_origins", ["o"] * (MAX_ITEMS + 1), f"lists and mappings hold at most {MAX_ITEMS} items"),
        ("hf_overrides", {"a": {"b": {"c": {"d": 1}}}}, f"nests at most {MAX_DEPTH} deep"),
        ("hf_overrides", {"a": ["y" * (MAX_STRING_CHARS + 1)]}, "strings are at most"),
        ("override_generation_config", {"temperature": float("nan")}, "must be a finite number"),
        ("cpu_offload_gb", float("inf"), "must be a finite number"),
    ],
)
def test_values_are_bounded(option, value, words):
    message = refusal(engine_options={option: value})
    assert f"models.0.engine_options.{option}: {words}" in message
    assert "x" * 100 not in message  # the value is not echoed


def test_the_mapping_is_bounded():
    options = {name: None for name, kinds in list(VLLM_ARGS.items()) if "null" in kinds}
    assert len(options) > MAX_OPTIONS
    message = refusal(engine_options=dict(list(options.items())[: MAX_OPTIONS + 1]))
    assert f"models.0.engine_options: Value error, at most {MAX_OPTIONS} engine options, got {MAX_OPTIONS + 1}" in (
        message
    )


def test_a_model_round_trips_through_its_dump():
    # What `meridian serve-config` writes is what the region app reads back.
    embed = ModelSpec(id="smol", task="embed", engine_options={"enforce_eager": True})
    dumped = embed.model_dump(mode="json")
    assert (dumped["task"], dumped["engine_options"]) == ("embed", {"enforce_eager": True})
    assert ModelSpec.model_validate(dumped) == embed
