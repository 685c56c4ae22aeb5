"""The LLMServer replica of a region, with its engine's load readable by the ingress."""

from __future__ import annotations

from typing import Any

from ray.serve.llm.deployment import LLMServer

from deployments.engine_stats import read_engine_stats


class RegionLLMServer(LLMServer):
    async def engine_stats(self) -> dict[str, Any]:
        return read_engine_stats()
