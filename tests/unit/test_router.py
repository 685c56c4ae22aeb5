"""The geo router against fake regions (httpx.MockTransport): choice, streaming,
failover before the first byte, no duplicate after it, and OpenAI-shaped errors."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import yaml
from starlette.testclient import TestClient

from meridian_core.contracts import CapacityReport, EngineLoad, RegionStatus, ReplicaCounts
from meridian_core.spec import load_spec, parse_spec

from .fake_regions import CHAT, MODEL, FakeRegions, running_router, scaled_to_zero

PARIS = "48.85,2.35"
WAITING = 4  # the busy replica's queue; a spill when it is one replica's, not four's


@pytest.fixture
def fakes() -> FakeRegions:
    return FakeRegions()


@pytest.fixture
def router(repo, fakes):
    with running_router(load_spec(repo / "configs" / "local.yaml"), fakes) as client:
        yield client


def repoll(router: TestClient) -> None:
    router.portal.call(router.app_state.regions.poll_once)


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert "Traceback" not in response.text
    assert "x-meridian-region" in response.headers
    return error


def test_default_location_goes_to_us_east(router):
    response = router.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["x-meridian-region"] == "local/us-east"
    assert response.json()["region"] == "local/us-east"


def test_european_client_goes_to_eu_west(router, fakes):
    response = router.post("/v1/chat/completions", json=CHAT, headers={"X-Client-Location": PARIS})
    assert response.headers["x-meridian-region"] == "local/eu-west"
    assert fakes["local-eu-west"].calls[-1] == "v1/chat/completions"
    assert "v1/chat/completions" not in fakes["local-us-east"].calls


def test_stream_is_passed_through(router):
    with router.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-meridian-region"] == "local/us-east"
        body = b"".join(response.iter_bytes())
    assert body.endswith(b"data: [DONE]\n\n")
    assert body.count(b"data: ") == 3


@pytest.mark.parametrize("mode", ["refuse", "gone", "error500"])
def test_failover_before_first_byte(router, fakes, mode):
    fakes["local-us-east"].mode = mode
    response = router.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["x-meridian-region"] == "local/eu-west"
    regions = router.get("/regions").json()["regions"]
    assert [r["healthy"] for r in regions] == [False, True]
    assert all("endpoint" not in r for r in regions)  # region addresses stay inside the router
    metrics = router.get("/metrics").text
    assert 'meridian_router_routing_decisions_total{reason="failover",region="local/eu-west"} 1.0' in metrics
    assert "meridian_router_upstream_errors_total{kind=" in metrics


def test_broken_stream_is_not_retried_and_ends_with_error_event(router, fakes):
    fakes["local-us-east"].mode = "break_stream"
    with router.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_bytes())
    events = [line for line in body.split(b"\n\n") if line]
    assert events[0].startswith(b'data: {"choices"')
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "stream_broken"
    assert "v1/chat/completions" not in fakes["local-eu-west"].calls  # never duplicated
    metrics = router.get("/metrics").text
    assert 'meridian_router_upstream_errors_total{kind="stream_broken",region="local/us-east"} 1.0' in metrics


def test_client_errors_from_region_pass_through_without_retry(router, fakes):
    fakes["local-us-east"].mode = "bad_request"
    response = router.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "max_tokens too large"
    assert "v1/chat/completions" not in fakes["local-eu-west"].calls


def test_malformed_json_is_400(router):
    error = assert_openai_error(
        router.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}), 400
    )
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/chat/completions", {"messages": CHAT["messages"]}, "model"),
        ("/v1/chat/completions", {"model": MODEL}, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages"),
        ("/v1/chat/completions", {**CHAT, "stream": "yes"}, "stream"),
        ("/v1/completions", {"model": MODEL}, "prompt"),
        ("/v1/chat/completions", [1, 2], None),
    ],
)
def test_missing_or_wrong_fields_are_400(router, path, body, param):
    error = assert_openai_error(router.post(path, json=body), 400)
    assert error["param"] == param


def test_bad_location_header_is_400(router):
    error = assert_openai_error(
        router.post("/v1/chat/completions", json=CHAT, headers={"X-Client-Location": "north"}), 400
    )
    assert "X-Client-Location" in error["message"]


def test_unknown_model_is_404(router, fakes):
    error = assert_openai_error(router.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404)
    assert error["code"] == "model_not_found"
    assert all("v1/chat/completions" not in r.calls for r in fakes.regions.values())


def test_no_healthy_region_is_503_with_retry_after(router, fakes):
    for region in fakes.regions.values():
        region.ready = 0
    repoll(router)
    response = router.post("/v1/chat/completions", json=CHAT)
    assert_openai_error(response, 503)
    assert int(response.headers["retry-after"]) >= 1
    assert router.get("/healthz").json() == {"status": "degraded", "healthy_regions": []}


@pytest.mark.parametrize("labelled", [True, False])
def test_a_regions_embedding_replicas_are_no_slots_for_its_chat_requests(router, fakes, labelled):
    # The nearest region: one busy chat replica and three idle embedding replicas.
    busy = {"running": 16, "waiting": WAITING, "kv_cache_usage": 0.1, "model": MODEL}
    idle = {"running": 0, "waiting": 0, "kv_cache_usage": 0.0, "model": "embed"}
    replicas = [busy, idle, idle, idle]
    if not labelled:  # a region that does not say which model each replica serves
        replicas = [{k: v for k, v in replica.items() if k != "model"} for replica in replicas]
    paris = fakes["local-eu-west"]
    paris.models, paris.ready, paris.waiting, paris.per_replica = [MODEL, "embed"], 4, WAITING, replicas
    repoll(router)
    response = router.post("/v1/chat/completions", json=CHAT, headers={"X-Client-Location": PARIS})
    assert response.status_code == 200
    # Counted as four slots, the queue looks short enough to wait in; it is one replica's.
    assert response.headers["x-meridian-region"] == ("local/us-east" if labelled else "local/eu-west")


def test_a_region_scaled_to_zero_spills_its_clients_to_a_warm_region(router, fakes):
    fakes["local-eu-west"].ready = 0
    fakes["local-eu-west"].autoscaling = scaled_to_zero()
    repoll(router)
    response = router.post("/v1/chat/completions", json=CHAT, headers={"X-Client-Location": PARIS})
    assert response.status_code == 200 and response.headers["x-meridian-region"] == "local/us-east"
    assert "v1/chat/completions" not in fakes["local-eu-west"].calls
    assert (
        'meridian_router_routing_decisions_total{reason="spill",region="local/us-east"} 1.0'
        in router.get("/metrics").text
    )


def test_with_every_region_scaled_to_zero_a_request_is_held_not_refused(router, fakes):
    for region in fakes.regions.values():
        region.ready = 0
        region.autoscaling = scaled_to_zero()
    repoll(router)
    response = router.post("/v1/chat/completions", json=CHAT, headers={"X-Client-Location": PARIS})
    # The fake answers at once; a real region queues the request while its replica starts.
    assert response.status_code == 200 and response.headers["x-meridian-region"] == "local/eu-west"
    assert (
        'meridian_router_routing_decisions_total{reason="hold",region="local/eu-west"} 1.0'
        in router.get("/metrics").text
    )


def test_nothing_is_held_for_a_region_at_zero_that_cannot_place_a_replica(router, fakes):
    for region in fakes.regions.values():
        region.ready = 0
        region.autoscaling = scaled_to_zero()
    fakes["local-eu-west"].capacity = CapacityReport(unplaced_replicas=1, reason="stockout; quota", at=1.0)
    repoll(router)
    response = router.post("/v1/chat/completions", json=CHAT, headers={"X-Client-Location": PARIS})
    assert response.status_code == 200 and response.headers["x-meridian-region"] == "local/us-east"
    assert "v1/chat/completions" not in fakes["local-eu-west"].calls
    fakes["local-us-east"].capacity = CapacityReport(unplaced_replicas=1, reason="quota", at=1.0)
    repoll(router)  # neither can start a replica: a clear 503, not a wait for one that never comes
    assert_openai_error(router.post("/v1/chat/completions", json=CHAT), 503)


def test_all_regions_failing_mid_request_is_503(router, fakes):
    for region in fakes.regions.values():
        region.mode = "refuse"
    response = router.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 503)
    assert "local/us-east" in error["message"] and "local/eu-west" in error["message"]
    assert "retry-after" in response.headers


def test_region_comes_back_after_a_good_poll_once_its_breaker_may_close(repo, fakes):
    data = yaml.safe_load((repo / "configs" / "local.yaml").read_text())
    data["router"]["breaker_open_s"] = 0.3
    with running_router(parse_spec(data), fakes) as router:
        fakes["local-us-east"].mode = "refuse"
        assert router.post("/v1/chat/completions", json=CHAT).headers["x-meridian-region"] == "local/eu-west"
        fakes["local-us-east"].mode = "ok"
        repoll(router)  # too soon after opening: the breaker stays open
        assert router.post("/v1/chat/completions", json=CHAT).headers["x-meridian-region"] == "local/eu-west"
        time.sleep(0.35)
        repoll(router)
        assert router.post("/v1/chat/completions", json=CHAT).headers["x-meridian-region"] == "local/us-east"


@pytest.mark.parametrize("mode", ["refuse", "hang"])
def test_a_region_that_goes_away_is_dropped_within_two_seconds(router, fakes, mode):
    assert all(r["healthy"] for r in router.get("/regions").json()["regions"])
    fakes["local-us-east"].mode = mode
    went_away = time.monotonic()
    while router.get("/regions").json()["regions"][0]["healthy"]:
        assert time.monotonic() - went_away < 2.0, "breaker still closed after 2 s"
        time.sleep(0.05)
    assert router.get("/regions").json()["regions"][0]["breaker_open"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"region": "r", "models": ["m"], "replicas": {"ready": 1}, "engine": {"running": Infinity}}',
        b'{"region": "r", "models": ["m"], "replicas": {"ready": 1e999}, "engine": {}}',
        b"[" * 50_000 + b"]" * 50_000,
    ],
    ids=["infinity", "overflow", "deep"],
)
def test_a_malformed_status_marks_that_region_down_and_the_poll_goes_on(repo, fakes, body):
    data = yaml.safe_load((repo / "configs" / "local.yaml").read_text())
    data["router"]["breaker_open_s"] = 0.0
    with running_router(parse_spec(data), fakes) as router:
        fakes["local-us-east"].status_body = body
        repoll(router)
        east, west = router.get("/regions").json()["regions"]
        assert not east["healthy"] and "malformed RegionStatus" in east["last_error"]
        assert west["healthy"]
        assert router.post("/v1/chat/completions", json=CHAT).headers["x-meridian-region"] == "local/eu-west"
        assert 'meridian_router_malformed_messages_total{contract="RegionStatus"}' in router.get("/metrics").text
        fakes["local-us-east"].status_body = None
        repoll(router)  # the same poll, still alive, reads the good answer
        assert router.get("/regions").json()["regions"][0]["healthy"]


def test_unknown_path_and_method_are_openai_shaped(router):
    assert_openai_error(router.get("/v1/nothing"), 404)
    assert_openai_error(router.get("/v1/chat/completions"), 405)


def test_models_health_and_metrics(router):
    models = router.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert router.get("/healthz").json()["healthy_regions"] == ["local/us-east", "local/eu-west"]
    router.post("/v1/chat/completions", json=CHAT)
    metrics = router.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert f'meridian_router_requests_total{{model="{MODEL}",region="local/us-east",status="200"}} 1.0' in metrics.text
    assert "meridian_router_time_to_first_byte_seconds_bucket" in metrics.text
    assert 'meridian_router_region_healthy{region="local/eu-west"} 1.0' in metrics.text


def test_a_loaded_region_loses_its_nearby_clients(router, fakes):
    fakes["local-eu-west"].waiting = 200
    repoll(router)
    response = router.post("/v1/chat/completions", json=CHAT, headers={"X-Client-Location": PARIS})
    assert response.headers["x-meridian-region"] == "local/us-east"
    assert (
        'meridian_router_routing_decisions_total{reason="load",region="local/us-east"} 1.0'
        in router.get("/metrics").text
    )


def test_session_stays_in_its_region(router):
    body = {**CHAT, "user": "alice"}
    first = router.post("/v1/chat/completions", json=body, headers={"X-Client-Location": PARIS})
    assert first.headers["x-meridian-region"] == "local/eu-west"
    # From mid-Atlantic, us-east is ~15 ms nearer: within the margin, so Alice stays...
    mid_atlantic = {"X-Client-Location": "44,-50"}
    again = router.post("/v1/chat/completions", json=body, headers=mid_atlantic)
    assert again.headers["x-meridian-region"] == "local/eu-west"
    assert 'reason="session",region="local/eu-west"} 1.0' in router.get("/metrics").text
    # ...while a client without a session, from another area (no hysteresis), goes nearest.
    stranger = router.post("/v1/chat/completions", json=CHAT, headers={"X-Client-Location": "42,-52"})
    assert stranger.headers["x-meridian-region"] == "local/us-east"


def test_client_gone_before_the_first_chunk_releases_the_region(repo, fakes):
    """The relay's clean-up must run even when Starlette never starts its body."""
    import asyncio

    from geo_router.live.app import create_app

    client = httpx.AsyncClient(transport=httpx.MockTransport(fakes.handle))
    app = create_app(load_spec(repo / "configs" / "local.yaml"), client=client)

    async def scenario() -> int:
        async with app.router.lifespan_context(app):
            body = json.dumps({**CHAT, "stream": True}).encode()
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive():  # noqa: ANN202
                return messages.pop(0) if messages else {"type": "http.disconnect"}

            async def send(message):  # noqa: ANN001, ANN202
                if message["type"] == "http.response.start":
                    raise OSError("client went away")

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/v1/chat/completions",
                "raw_path": b"/v1/chat/completions",
                "query_string": b"",
                "headers": [(b"content-type", b"application/json")],
                "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 8080),
                "scheme": "http",
                "http_version": "1.1",
                "root_path": "",
                "app": app,
            }
            try:
                await app(scope, receive, send)
            except OSError:
                pass
            return app.state.regions.regions["local/us-east"].in_flight

    assert asyncio.run(scenario()) == 0


def test_every_breaker_open_means_panic_routing_not_a_blanket_503(router, fakes):
    for region in fakes.regions.values():
        region.mode = "refuse"
    assert router.post("/v1/chat/completions", json=CHAT).status_code == 503  # opens both breakers
    for region in fakes.regions.values():
        region.mode = "ok"
    # No poll yet: both breakers are still open, but both last reported a ready replica.
    response = router.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert (
        'meridian_router_routing_decisions_total{reason="panic",region="local/us-east"} 1.0'
        in router.get("/metrics").text
    )


def test_a_region_a_slow_poll_held_back_serves_when_the_only_healthy_region_fails(router, fakes):
    # On a busy machine one slow poll of an idle region opens its breaker; meanwhile the
    # nearest region loses its only node, and its ingress answers 5xx.
    router.app_state.regions.regions["local/eu-west"].poll_timed_out(window_s=1.5)
    assert [r["healthy"] for r in router.get("/regions").json()["regions"]] == [True, False]
    fakes["local-us-east"].mode = "error500"
    response = router.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["x-meridian-region"] == "local/eu-west"
    assert 'meridian_router_routing_decisions_total{reason="failover",region="local/eu-west"} 1.0' in (
        router.get("/metrics").text
    )


def test_a_region_with_no_ready_replica_is_no_reserve(router, fakes):
    fakes["local-eu-west"].ready = 0
    repoll(router)
    router.app_state.regions.regions["local/eu-west"].poll_timed_out(window_s=1.5)
    fakes["local-us-east"].mode = "error500"
    assert_openai_error(router.post("/v1/chat/completions", json=CHAT), 503)
    assert "v1/chat/completions" not in fakes["local-eu-west"].calls


def test_a_slow_poll_does_not_drop_a_region_that_is_answering():
    from geo_router.live.regions import Region
    from meridian_core.geo import LatLon

    answering = RegionStatus(region="r", models=[MODEL], replicas=ReplicaCounts(ready=1), engine=EngineLoad())
    region = Region("r", LatLon(0, 0), "http://r")
    region.apply_status(answering)
    region.mark_answered()
    region.poll_timed_out(window_s=1.5)
    assert region.healthy and "answering" in region.last_error
    idle = Region("s", LatLon(0, 0), "http://s")
    idle.apply_status(answering)
    idle.poll_timed_out(window_s=1.5)
    assert not idle.healthy


def test_each_region_is_sent_its_own_token_and_never_the_clients_credentials(repo, fakes, monkeypatch):
    monkeypatch.setenv("MERIDIAN_REGION_TOKEN_LOCAL_US_EAST", "east-token")
    with running_router(load_spec(repo / "configs" / "local.yaml"), fakes) as router:
        repoll(router)
        response = router.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer client-key"})
        assert response.status_code == 200 and response.headers["x-meridian-region"] == "local/us-east"
    east, west = fakes["local-us-east"], fakes["local-eu-west"]
    assert {"status", "v1/chat/completions"} <= set(east.calls)
    assert [h.get("authorization") for h in east.headers] == ["Bearer east-token"] * len(east.calls)
    assert west.calls and all("authorization" not in h for h in west.headers)  # it has no token
