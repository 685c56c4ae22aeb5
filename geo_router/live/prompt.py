"""What the router can tell about a prompt without a tokenizer."""

from __future__ import annotations

import hashlib
import json
from typing import Any

CHARS_PER_TOKEN = 4  # English text with BPE tokenizers; an estimate, corrected online
BLOCK_CHARS = 256  # 64 tokens: prefix-cache affinity is tracked at this grain
MAX_BLOCKS = 64


def prompt_text(fields: dict[str, Any]) -> str:
    """The prompt as the model will see it, near enough: messages in order, or the prompt."""
    if "messages" in fields:
        return json.dumps(fields["messages"], ensure_ascii=False, separators=(",", ":"))
    prompt = fields.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt, separators=(",", ":"))


def prefix_blocks(text: str) -> tuple[str, ...]:
    """Chained hashes of the leading whole blocks: block i's hash covers blocks 0..i."""
    hashes = []
    running = hashlib.blake2b(digest_size=8)
    for start in range(0, min(len(text), BLOCK_CHARS * MAX_BLOCKS) - BLOCK_CHARS + 1, BLOCK_CHARS):
        running.update(text[start : start + BLOCK_CHARS].encode())
        hashes.append(running.copy().hexdigest())
    return tuple(hashes)
