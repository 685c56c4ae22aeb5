"""Fuzz the router's OpenAPI surface with schemathesis: valid and invalid bodies alike
must never get a 5xx while regions are healthy, and the router keeps answering."""

from __future__ import annotations

import asyncio

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.generation.modes import GenerationMode
from starlette.testclient import TestClient

from geo_router.live.app import create_app
from meridian_core.spec import load_spec

from ..conftest import REPO
from .fake_regions import CHAT, FakeRegions

FAKES = FakeRegions()
APP = create_app(
    load_spec(REPO / "configs" / "local.yaml"), client=httpx.AsyncClient(transport=httpx.MockTransport(FAKES.handle))
)
asyncio.run(APP.state.regions.poll_once())  # the fuzzer does not run the app's lifespan

schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=60, deterministic=True
)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
    assert "Traceback" not in response.text


def test_router_still_serves_after_the_fuzz():
    with TestClient(APP) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
