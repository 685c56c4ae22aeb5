"""What the router audit found, each fixed at its depth: a body nested too deeply is a
400, session identifiers are kept as fixed-size keys, ..."""

from __future__ import annotations

import pytest

from meridian_core.spec import load_spec

from ..conftest import REPO
from .fake_regions import CHAT, FakeRegions, running_router


@pytest.fixture
def fakes() -> FakeRegions:
    return FakeRegions()


@pytest.fixture
def router(fakes):  # type: ignore[no-untyped-def]
    with running_router(load_spec(REPO / "configs" / "local.yaml"), fakes) as client:
        yield client


def test_a_body_nested_too_deeply_is_a_400_not_a_traceback(router):
    body = b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    refused = router.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "request body is nested too deeply"


def test_sessions_are_remembered_by_a_fixed_size_key_and_long_identifiers_refused(router):
    long_user = "u" * 100_000
    refused = router.post("/v1/chat/completions", json={**CHAT, "user": long_user})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "user"
    refused = router.post("/v1/chat/completions", json=CHAT, headers={"X-Session-Id": "s" * 257})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "x-session-id"
    for index in range(3):
        assert router.post("/v1/chat/completions", json={**CHAT, "user": f"user-{index}" * 25}).status_code == 200
    assert router.post("/v1/chat/completions", json=CHAT, headers={"X-Session-Id": "s" * 256}).status_code == 200
    memory = router.app_state.memory
    assert len(memory.sessions) == 4
    assert all(isinstance(key, str) and len(key) == 32 for key in memory.sessions._items)
