"""A region with a token answers nothing without it: its ingress app refuses any request
that does not present it, with an OpenAI-shaped 401, and a region without one is open."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from deployments import region_ingress
from deployments.region_ingress import region_app
from meridian_host.region_tokens import token_sha256


@pytest.fixture
def app():
    app = region_app()
    app.get("/status")(lambda: {"ready": 1})
    app.post("/v1/chat/completions")(lambda: {"object": "chat.completion"})
    yield app
    region_ingress._REGION_TOKEN_DIGEST["sha256"] = None


@pytest.mark.parametrize("path, method", [("/status", "get"), ("/v1/chat/completions", "post")])
def test_a_region_with_a_token_refuses_requests_without_it(app, path, method):
    region_ingress._REGION_TOKEN_DIGEST["sha256"] = token_sha256("region-token")
    client = TestClient(app)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic region-token"}):
        refused = getattr(client, method)(path, headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["message"] == "a valid region token is required"
    answered = getattr(client, method)(path, headers={"Authorization": "Bearer region-token"})
    assert answered.status_code == 200


def test_a_region_without_a_token_is_open(app):
    assert TestClient(app).get("/status").json() == {"ready": 1}
