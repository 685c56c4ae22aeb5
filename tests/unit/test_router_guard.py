"""Who may call, how much, how big: API keys, per-key limits, the body cap, request ids."""

from __future__ import annotations

import json
import logging
import math

import pytest
import yaml

from geo_router.live.auth import digest
from geo_router.policy.ratelimit import RateLimits
from meridian_core.spec import SpecError, parse_spec

from .fake_regions import CHAT, FakeRegions, running_router

ALPHA, BETA = "sk-alpha-0123456789", "sk-beta-9876543210"


def spec_with(repo, monkeypatch, **router):
    data = yaml.safe_load((repo / "configs" / "local.yaml").read_text())
    data["router"].update(router)
    monkeypatch.setenv("MERIDIAN_TEST_BETA_KEY", BETA)
    return parse_spec(data)


@pytest.fixture
def fakes():
    return FakeRegions()


@pytest.fixture
def keyed_router(repo, monkeypatch, fakes):
    keys = [
        {"name": "alpha", "sha256": digest(ALPHA), "requests_per_minute": 2},
        {"name": "beta", "key_env": "MERIDIAN_TEST_BETA_KEY", "tokens_per_minute": 600},
    ]
    with running_router(spec_with(repo, monkeypatch, auth={"keys": keys}), fakes) as client:
        yield client


def inference_calls(fakes: FakeRegions) -> int:
    return sum(1 for r in fakes.regions.values() for call in r.calls if call.startswith("v1/"))


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {ALPHA}"}, {"Authorization": "Bearer "}],
)
def test_no_valid_key_is_401_and_reaches_no_region(keyed_router, fakes, headers):
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"model": CHAT["model"], "prompt": "x"})):
        response = keyed_router.post(path, json=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert keyed_router.get("/v1/models", headers=headers).status_code == 401
    assert inference_calls(fakes) == 0


def test_valid_keys_from_spec_digest_and_environment(keyed_router):
    for key in (ALPHA, BETA):
        body = {**CHAT, "max_tokens": 16}
        response = keyed_router.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
    assert keyed_router.get("/v1/models", headers={"Authorization": f"Bearer {ALPHA}"}).status_code == 200
    assert keyed_router.get("/healthz").status_code == 200  # probes need no key


def test_requests_per_minute_limit_is_429_with_retry_after(keyed_router, fakes):
    auth = {"Authorization": f"Bearer {ALPHA}"}
    assert [keyed_router.post("/v1/chat/completions", json=CHAT, headers=auth).status_code for _ in range(2)] == [
        200,
        200,
    ]
    limited = keyed_router.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(limited.headers["retry-after"]) <= 30  # one request refills in 60/2 s
    assert inference_calls(fakes) == 2
    # Another key is unaffected.
    assert (
        keyed_router.post(
            "/v1/chat/completions", json={**CHAT, "max_tokens": 16}, headers={"Authorization": f"Bearer {BETA}"}
        ).status_code
        == 200
    )


def test_tokens_per_minute_limit_counts_prompt_and_completion_cap(keyed_router, fakes):
    auth = {"Authorization": f"Bearer {BETA}"}
    fakes["local-us-east"].mode = fakes["local-eu-west"].mode = "bad_request"  # answers without usage
    small = {**CHAT, "max_tokens": 100}
    assert keyed_router.post("/v1/chat/completions", json=small, headers=auth).status_code == 400
    big = {**CHAT, "max_tokens": 550}  # with the first, over 600 tokens/minute
    response = keyed_router.post("/v1/chat/completions", json=big, headers=auth)
    assert response.status_code == 429
    never = {**CHAT, "max_tokens": 5000}  # more than the bucket holds: never admissible
    refused = keyed_router.post("/v1/chat/completions", json=never, headers=auth)
    assert refused.status_code == 429 and "set max_tokens lower" in refused.json()["error"]["message"]


def test_tokens_per_minute_charges_every_choice_and_the_rest_of_the_context_without_a_cap(keyed_router):
    auth = {"Authorization": f"Bearer {BETA}"}
    one_choice = {**CHAT, "max_tokens": 100}
    many_choices = {**one_choice, "n": 64}  # 6,400 completion tokens: more than the key's minute
    assert keyed_router.post("/v1/chat/completions", json=many_choices, headers=auth).status_code == 429
    uncapped = dict(CHAT)  # may run to max_model_len (2,048): more than the key's minute
    assert keyed_router.post("/v1/chat/completions", json=uncapped, headers=auth).status_code == 429
    float_cap = {**CHAT, "max_tokens": 1.5}  # not a cap the router can count: the rest of the context too
    assert keyed_router.post("/v1/chat/completions", json=float_cap, headers=auth).status_code == 429
    assert keyed_router.post("/v1/chat/completions", json=one_choice, headers=auth).status_code == 200


def test_prompts_are_counted_in_tokens_not_characters(keyed_router):
    # 600 Chinese characters: characters ÷ 4 would say 150 tokens; each is at least one.
    chinese = {**CHAT, "messages": [{"role": "user", "content": "北京是中国的首都。" * 67}], "max_tokens": 10}
    refused = keyed_router.post("/v1/chat/completions", json=chinese, headers={"Authorization": f"Bearer {BETA}"})
    assert refused.status_code == 429


def test_oversized_body_is_413(repo, monkeypatch, fakes):
    with running_router(spec_with(repo, monkeypatch, max_body_bytes=2048), fakes) as router:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
        response = router.post("/v1/chat/completions", json=big)
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "invalid_request_error"
        chunked = router.post(
            "/v1/chat/completions",
            content=iter([json.dumps(big).encode()]),  # no content-length: counted while read
            headers={"content-type": "application/json"},
        )
        assert chunked.status_code == 413
        assert inference_calls(fakes) == 0


def test_request_id_is_returned_forwarded_and_logged(repo, monkeypatch, fakes, caplog):
    with (
        running_router(spec_with(repo, monkeypatch), fakes) as router,
        caplog.at_level(logging.INFO, "meridian.access"),
    ):
        response = router.post("/v1/chat/completions", json=CHAT)
        generated = response.headers["x-request-id"]
        assert len(generated) == 32
        assert fakes["local-us-east"].headers[-1]["x-request-id"] == generated
        mine = router.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "trace-me-42"})
        assert mine.headers["x-request-id"] == "trace-me-42"
        assert router.post("/v1/chat/completions", content=b"{").headers["x-request-id"]
    lines = [json.loads(r.message) for r in caplog.records if r.name == "meridian.access"]
    assert [(line["request_id"], line["status"], line["region"]) for line in lines[:2]] == [
        (generated, 200, "local/us-east"),
        ("trace-me-42", 200, "local/us-east"),
    ]
    assert lines[0]["model"] == CHAT["model"] and lines[0]["duration_ms"] >= 0


def test_key_spec_errors_name_the_field(repo, monkeypatch):
    with pytest.raises(SpecError, match="router.auth.keys.0: .*exactly one of sha256"):
        spec_with(repo, monkeypatch, auth={"keys": [{"name": "x"}]})
    with pytest.raises(SpecError, match="router.auth.keys.0.sha256"):
        spec_with(repo, monkeypatch, auth={"keys": [{"name": "x", "sha256": "abc"}]})


def test_a_missing_region_ca_file_fails_at_load_naming_the_field(repo, monkeypatch, tmp_path):
    with pytest.raises(SpecError, match="router.region_ca_file: .*no such file"):
        spec_with(repo, monkeypatch, region_ca_file=str(tmp_path / "missing.pem"))


def test_token_bucket_refills_continuously():
    limits = RateLimits([("k", None, 60)])  # 60 tokens a minute: one a second
    assert limits.admit("k", 60, now=0) == 0
    assert limits.admit("k", 1, now=0) == pytest.approx(1.0)
    assert limits.admit("k", 30, now=10) == pytest.approx(20.0)
    assert limits.admit("k", 61, now=100) == math.inf
    assert limits.levels("k", now=100) == (None, pytest.approx(60))


def test_key_limits_take_both_or_nothing():
    limits = RateLimits([("k", 10, 100)])
    assert limits.admit("k", 90, now=0) == 0
    assert limits.admit("k", 20, now=0) > 0  # tokens short: the request is not charged either
    assert limits.levels("k", now=0) == (pytest.approx(9), pytest.approx(10))


def test_a_refund_and_a_settlement_give_back_what_went_unused():
    limits = RateLimits([("k", 1, 100)])
    assert limits.admit("k", 100, now=0) == 0
    limits.refund("k", 100, now=0)
    assert limits.levels("k", now=0) == (pytest.approx(1), pytest.approx(100))
    assert limits.admit("k", 100, now=0) == 0
    limits.settle("k", 100, 30, now=0)  # charged 100 ahead, used 30
    assert limits.levels("k", now=0) == (pytest.approx(0), pytest.approx(70))


def test_usage_is_read_from_the_last_usage_object_of_an_answer():
    from geo_router.live.usage import used_tokens

    stream = (
        b'data: {"choices":[{"delta":{"content":"Paris"}}],"usage":null}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,'
        b'"prompt_tokens_details":{"cached_tokens":8}}}\n\ndata: [DONE]\n\n'
    )
    assert used_tokens(stream) == 15
    assert used_tokens(b'{"id":"x","usage":{"prompt_tokens":7,"completion_tokens":2}}') == 9
    assert used_tokens(b'data: {"choices":[{"delta":{"content":"usage"}}]}\n\n') is None
