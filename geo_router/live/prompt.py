"""What the router can tell about a prompt without a tokenizer.

The prompt's text is what the compiled front (routing_core/src/front/request.rs) makes
of the same request, so that a prompt's blocks have the same keys on either path.
"""

from __future__ import annotations

import json
from typing import Any

from geo_router.policy.scoring import BLOCK_BYTES, prefix_blocks

__all__ = ["BLOCK_BYTES", "CHARS_PER_TOKEN", "prefix_blocks", "prompt_text"]

CHARS_PER_TOKEN = 4  # English text with BPE tokenizers; an estimate, corrected online


def prompt_text(fields: dict[str, Any]) -> str:
    """The prompt as the model will see it, near enough: messages in order, or the prompt."""
    if "messages" in fields:
        return json.dumps(fields["messages"], ensure_ascii=False, separators=(",", ":"))
    prompt = fields.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False, separators=(",", ":"))
