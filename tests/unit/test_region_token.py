"""A region with a token answers nothing without it: each of its apps (the control app
and every model replica's vLLM app) refuses any request that does not present it, with an
OpenAI-shaped 401, and a region without one is open. Each cluster Meridian starts has a
Ray token of its own."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from deployments.region_auth import RegionTokenGuard, region_token_digest
from meridian_host.platform_state import ClusterState, PlatformState
from meridian_host.region_tokens import dashboard_headers, ray_auth_env, token_sha256


def guarded_app(digest: str | None) -> FastAPI:
    """An app guarded as a region's are: routes first, then the guard added (the model
    replica adds it to vLLM's app after vLLM built it)."""
    app = FastAPI()
    app.get("/status")(lambda: {"ready": 1})
    app.post("/v1/chat/completions")(lambda: {"object": "chat.completion"})
    app.middleware_stack = app.build_middleware_stack()
    app.middleware_stack = None
    app.add_middleware(RegionTokenGuard, digest=digest)
    return app


@pytest.mark.parametrize("path, method", [("/status", "get"), ("/v1/chat/completions", "post")])
def test_a_region_with_a_token_refuses_requests_without_it(path, method):
    client = TestClient(guarded_app(token_sha256("region-token")))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic region-token"}):
        refused = getattr(client, method)(path, headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"] == {
            "message": "a valid region token is required",
            "type": "invalid_request_error",
            "code": 401,
        }
    answered = getattr(client, method)(path, headers={"Authorization": "Bearer region-token"})
    assert answered.status_code == 200


def test_a_region_without_a_token_is_open():
    assert TestClient(guarded_app(None)).get("/status").json() == {"ready": 1}


def test_a_token_read_from_the_environment_is_checked_by_its_digest_and_a_missing_one_stops_the_region():
    assert region_token_digest(None, "MERIDIAN_REGION_TOKEN", {"MERIDIAN_REGION_TOKEN": "t"}) == token_sha256("t")
    assert region_token_digest("ab" * 32, None, {"MERIDIAN_REGION_TOKEN": "t"}) == "ab" * 32
    assert region_token_digest(None, None, {}) is None
    for environ in ({}, {"MERIDIAN_REGION_TOKEN": ""}):
        with pytest.raises(RuntimeError, match="MERIDIAN_REGION_TOKEN is empty or unset"):
            region_token_digest(None, "MERIDIAN_REGION_TOKEN", environ)


def test_a_managed_cluster_has_its_own_ray_token_and_an_existing_one_the_users(tmp_path, monkeypatch):
    monkeypatch.setenv("MERIDIAN_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    state = PlatformState(name="p", spec_path="spec.yaml", platform_id="x", router_url="http://127.0.0.1:1")
    east, west = (
        ClusterState(slug=slug, gcs_address="127.0.0.1:1", dashboard_url="http://d", ray_temp_dir=f"/tmp/{slug}")
        for slug in ("east", "west")
    )
    existing = ClusterState(slug="lab", gcs_address="10.0.0.1:6379", dashboard_url="http://d")

    env = ray_auth_env(state, east)
    assert env["RAY_AUTH_MODE"] == "token" and len(env["RAY_AUTH_TOKEN"]) == 64
    assert ray_auth_env(state, east) == env  # kept, the same on every call
    assert ray_auth_env(state, west)["RAY_AUTH_TOKEN"] != env["RAY_AUTH_TOKEN"]
    assert (state.cluster_dir("east") / "ray-token").stat().st_mode & 0o777 == 0o600
    assert dashboard_headers(state, east) == {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}

    assert ray_auth_env(state, existing) == {} and dashboard_headers(state, existing) == {}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "the-users")
    assert dashboard_headers(state, existing) == {"Authorization": "Bearer the-users"}
