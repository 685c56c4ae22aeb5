"""Prompt tokens, counted with each model's own tokenizer (loaded once, when the router
starts), for tokens-per-minute limits and the scorer's prefill estimate.

A model whose tokenizer is not on this machine (a hub model, one not pulled) is counted
by its UTF-8 bytes: a byte-level BPE token is at least one byte, so that never
undercounts, whatever the script (characters ÷ 4 undercounts Chinese 6× and emoji 10×).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from meridian_core.model_files import local_model_dir
from meridian_core.spec import ModelSpec

log = logging.getLogger(__name__)

# Longer prompts are counted off the event loop (tokenizers releases the GIL). Measured
# on the reference machine with SmolLM2's tokenizer: 11 µs for 30 characters, 0.8 ms for
# 2,000, 9 ms for 16,000.
INLINE_CHARS = 4 * 1024
# What a chat message costs beyond its text: its role and the template's markers.
TOKENS_PER_MESSAGE = 4


def prompt_texts(fields: dict[str, Any]) -> list[str]:
    """The text the model reads: each message's content (its text parts), or the prompt(s)."""
    if "messages" in fields:
        texts = []
        for message in fields["messages"]:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                parts = [part.get("text") for part in content if isinstance(part, dict)]
                texts += [text for text in parts if isinstance(text, str)]
        return texts
    source = fields.get("prompt", fields.get("input", ""))
    items = source if isinstance(source, list) else [source]
    return [item for item in items if isinstance(item, str)]


class PromptTokens:
    def __init__(self, models: Sequence[ModelSpec]):
        self._files = {model.id: _tokenizer_file(model) for model in models}
        self._tokenizers = {model: _load(str(path)) if path else None for model, path in self._files.items()}

    def has_tokenizer(self, model: str) -> bool:
        return self._tokenizers.get(model) is not None

    def tokenizer_file(self, model: str) -> Path | None:
        """The model's tokenizer.json here; None without one."""
        return self._files.get(model)

    def count_texts(self, model: str, texts: list[str]) -> int | None:
        """The texts' tokens by `model`'s tokenizer, now (the compiled front asks, from its
        own thread); None without one."""
        tokenizer = self._tokenizers.get(model)
        return _encoded_length(tokenizer, texts) if tokenizer is not None else None

    async def count(self, model: str, fields: dict[str, Any]) -> int:
        texts = prompt_texts(fields)
        overhead = TOKENS_PER_MESSAGE * len(fields["messages"]) if "messages" in fields else 0
        tokenizer = self._tokenizers.get(model)
        if tokenizer is None:
            return overhead + sum(len(text.encode()) for text in texts)
        if sum(len(text) for text in texts) <= INLINE_CHARS:
            return overhead + _encoded_length(tokenizer, texts)
        return overhead + await asyncio.to_thread(_encoded_length, tokenizer, texts)


def _encoded_length(tokenizer: Tokenizer, texts: list[str]) -> int:
    # One text at a time: encode_batch's thread pool costs more than it saves here.
    return sum(len(tokenizer.encode(text, add_special_tokens=False).ids) for text in texts)


def _tokenizer_file(model: ModelSpec) -> Path | None:
    directory = local_model_dir(model.source)
    path = directory / "tokenizer.json" if directory is not None else None
    if path is None or not path.is_file():
        log.info("%s: no tokenizer here; its prompts are counted by their UTF-8 bytes", model.id)
        return None
    return path


@functools.cache  # one per file and process, however many apps are built (0.1 s each)
def _load(path: str) -> Tokenizer:
    return Tokenizer.from_file(path)
