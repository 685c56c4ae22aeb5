"""A region's LLM server starts its engine without Ray Serve LLM's telemetry actor
while Ray's usage stats are off."""

from __future__ import annotations

import asyncio

import pytest
from ray.llm._internal.serve.core.server import llm_server

from deployments import region_server
from deployments.region_server import RegionLLMServer


class StartedEngine:
    started = False

    async def start(self) -> None:
        self.started = True


@pytest.mark.parametrize("usage_stats", [False, True])
def test_the_telemetry_report_is_pushed_only_with_usage_stats_on(monkeypatch, usage_stats):
    pushed: list[object] = []

    def push(all_models: list[object]) -> None:
        pushed.extend(all_models)

    monkeypatch.setattr(llm_server, "push_telemetry_report_for_all_models", push)
    monkeypatch.setattr(region_server, "usage_stats_enabled", lambda: usage_stats)
    server = object.__new__(RegionLLMServer)  # no engine of its own: this test hands it one
    server.engine, server._llm_config = StartedEngine(), "config"
    asyncio.run(server._start_engine())
    assert server.engine.started
    assert pushed == (["config"] if usage_stats else [])
