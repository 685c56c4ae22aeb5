"""The OpenAI endpoints a client expects beyond chat and completions: a model looked up by
id, embeddings routed to the regions that serve the embedding model, and the Responses
API answered with a clear OpenAI-shaped 404 (Ray Serve LLM's ingress does not serve it).
Each keeps the router's guarantees: auth, failover before the first byte, metrics."""

from __future__ import annotations

import pytest
import yaml

from geo_router.live.auth import digest
from meridian_core.spec import parse_spec

from ..conftest import REPO
from .fake_regions import MODEL, FakeRegions, running_router

EMBEDDER = "smollm2-embed"
KEY = "sk-surface"


@pytest.fixture
def fakes() -> FakeRegions:
    fakes = FakeRegions()
    fakes["local-eu-west"].models = [MODEL, EMBEDDER]
    return fakes


def spec_with(keys: bool = False):  # type: ignore[no-untyped-def]
    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    data["models"].append({"id": EMBEDDER, "source": {"kind": "packaged"}})
    if keys:
        data["router"]["auth"] = {"keys": [{"name": "a", "sha256": digest(KEY)}]}
    return parse_spec(data)


def assert_openai_error(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_a_model_is_retrieved_by_id_or_is_an_openai_shaped_404(fakes):
    with running_router(spec_with(), fakes) as router:
        card = router.get(f"/v1/models/{MODEL}").json()
        assert card == {"id": MODEL, "object": "model", "created": 0, "owned_by": "meridian", "ready": True}
        assert_openai_error(router.get("/v1/models/no-such-model"), 404, "model_not_found")
        assert len(router.get("/v1/models/" + "x" * 5000).json()["error"]["message"]) < 300  # bounded echo


def test_embeddings_go_to_a_region_that_serves_the_embedding_model_and_fail_over(fakes):
    with running_router(spec_with(), fakes) as router:
        body = {"model": EMBEDDER, "input": ["a sentence"]}
        # us-east is nearer to the default location but does not serve the embedder.
        answered = router.post("/v1/embeddings", json=body)
        assert answered.status_code == 200 and answered.json()["region"] == "local/eu-west"
        assert fakes["local-eu-west"].calls[-1] == "v1/embeddings"
        assert "v1/embeddings" not in fakes["local-us-east"].calls
        fakes["local-us-east"].models = [MODEL, EMBEDDER]
        fakes["local-eu-west"].mode = "error500"
        router.app_state.regions.regions["local/us-east"].models = frozenset([MODEL, EMBEDDER])
        east_first = router.post("/v1/embeddings", json=body, headers={"X-Client-Location": "48.85,2.35"})
        assert east_first.status_code == 200 and east_first.json()["region"] == "local/us-east"
        assert 'meridian_router_requests_total{model="smollm2-embed",region="local/us-east",status="200"}' in (
            router.get("/metrics").text
        )
        missing = router.post("/v1/embeddings", json={"model": EMBEDDER})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "input"


def test_the_responses_api_is_a_clear_404_and_still_needs_a_key(fakes):
    with running_router(spec_with(keys=True), fakes) as router:
        assert router.post("/v1/responses", json={"model": MODEL, "input": "hi"}).status_code == 401
        refused = router.post(
            "/v1/responses", json={"model": MODEL, "input": "hi"}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert_openai_error(refused, 404, "unsupported_endpoint")
        assert "/v1/chat/completions" in refused.json()["error"]["message"]
        assert router.get(f"/v1/models/{MODEL}").status_code == 401
