"""A model's task and vLLM engine options, as the spec declares them (`models[].task`,
`models[].engine_options`).

Options are checked at spec load against vLLM's own argument names and kinds at the
pinned version (meridian_core/vllm_args.py, generated from vLLM), so a typo fails naming
its field rather than a replica failing to start, and nothing here imports vLLM.
"""

from __future__ import annotations

import math
from difflib import get_close_matches
from typing import Any, Literal

from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from meridian_core.vllm_args import VLLM_ARGS

Task = Literal["generate", "embed"]
# What vLLM runs each task as: an `embed` model runs as a pooling model, a decoder
# (SmolLM2, Llama, ...) converted to one that embeds with its last token's hidden state.
TASK_ENGINE_ARGS: dict[str, dict[str, str]] = {
    "generate": {"runner": "generate"},
    "embed": {"runner": "pooling", "convert": "embed"},
}
# Arguments Meridian (or Ray Serve LLM) sets itself, and what to set instead.
SET_ELSEWHERE: dict[str, str] = {
    "model": "the model's `source` sets it",
    "served_model_name": "the model's `id` sets it",
    "max_model_len": "set the model's `max_model_len` instead",
    "runner": "the model's `task` sets it",
    "convert": "the model's `task` sets it",
    "kv_cache_memory_bytes": "set the model's `kv_cache_gib` instead",
    "disable_log_stats": "Meridian keeps it false: the region's /status reads the engine's stats",
    "distributed_executor_backend": "Ray Serve LLM sets it",
}
MAX_OPTIONS = 32
# One option's value: its strings, its items (lists and mappings), its nesting.
MAX_STRING_CHARS = 1024
MAX_ITEMS = 64
MAX_DEPTH = 3


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for scalar, kind in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (list, "list"), (dict, "dict")):
        if isinstance(value, scalar):
            return kind
    return type(value).__name__


def _shape_problem(value: Any, depth: int = 1) -> str | None:
    """What makes a value more than a JSON scalar or a small list or mapping of them."""
    kind = _kind(value)
    if kind == "float" and not math.isfinite(value):
        return "must be a finite number"
    if kind == "str" and len(value) > MAX_STRING_CHARS:
        return f"strings are at most {MAX_STRING_CHARS} characters"
    if kind in ("list", "dict"):
        if depth > MAX_DEPTH:
            return f"nests at most {MAX_DEPTH} deep"
        if len(value) > MAX_ITEMS:
            return f"lists and mappings hold at most {MAX_ITEMS} items"
        if kind == "dict" and not all(isinstance(k, str) and len(k) <= MAX_STRING_CHARS for k in value):
            return "mapping keys must be strings"
        items = value.values() if kind == "dict" else value
        return next((p for p in (_shape_problem(item, depth + 1) for item in items) if p), None)
    if kind not in ("null", "bool", "int", "float", "str"):
        return f"a {kind} is not a JSON value"
    return None


def option_problem(name: str, value: Any) -> str | None:
    """Why `name: value` cannot be a model's engine option, or None if it can."""
    if name in SET_ELSEWHERE:
        return f"not an engine option here: {SET_ELSEWHERE[name]}"
    if name not in VLLM_ARGS:
        guess = get_close_matches(name, VLLM_ARGS, n=1)
        return "not a vLLM engine argument" + (f" (did you mean {guess[0]}?)" if guess else "")
    kinds = VLLM_ARGS[name]
    if not kinds:
        return "vLLM takes only a Python object here, which a spec cannot give"
    shape = _shape_problem(value)
    if shape is not None:
        return shape
    kind = _kind(value)
    if kind not in kinds and not (kind == "int" and "float" in kinds):
        return f"vLLM takes {' or '.join(kinds)} here, not {kind}"
    return None


def check_engine_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options as they are, or a ValidationError naming each bad one by its key."""
    if len(options) > MAX_OPTIONS:
        raise ValueError(f"at most {MAX_OPTIONS} engine options, got {len(options)}")
    errors = [
        InitErrorDetails(
            type=PydanticCustomError("engine_option", "{problem}", {"problem": problem}), loc=(name,), input=value
        )
        for name, value in options.items()
        if (problem := option_problem(name, value)) is not None
    ]
    if errors:
        raise ValidationError.from_exception_data("engine_options", errors)
    return options
