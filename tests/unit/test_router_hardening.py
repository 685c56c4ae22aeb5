"""What the router audit found, each fixed at its depth: the health poll survives any
error (one region's bad answer marks that region down; a failed loop is restarted,
logged and counted, and /healthz says when the view of the regions is stale); a breaker
failed requests opened closes only on answered inference, not on a good /status; a
request that fails everywhere opens no breaker, and failovers stay within a budget;
nothing a region said (a prompt it echoed, its stack's internals) reaches clients or the
router's own status; a body nested too deeply is a 400; session identifiers are kept as
fixed-size keys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import yaml
from starlette.testclient import TestClient

from geo_router.live import supervised
from geo_router.live.auth import digest
from geo_router.live.regions import Region
from meridian_core.spec import load_spec, parse_spec

from ..conftest import REPO
from .fake_regions import CHAT, FakeRegions, running_router, scaled_to_zero


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
    # Held by a 64-bit hash of each key (routing_core's memory), whatever the id's length.
    assert router.app_state.memory.sessions_held == 4


def repoll(router) -> None:  # type: ignore[no-untyped-def]
    router.portal.call(router.app_state.regions.poll_once)


def metric(router, name: str) -> float:  # type: ignore[no-untyped-def]
    (line,) = [line for line in router.get("/metrics").text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[-1])


def test_an_unexpected_error_in_one_regions_poll_marks_it_down_and_the_poll_goes_on(router, monkeypatch):
    apply_status = Region.apply_status

    def broken_for_us_east(region: Region, status) -> None:  # type: ignore[no-untyped-def]
        if region.name == "local/us-east":
            raise OverflowError("cannot convert float infinity to integer")
        apply_status(region, status)

    monkeypatch.setattr(Region, "apply_status", broken_for_us_east)
    repoll(router)
    east, west = router.get("/regions").json()["regions"]
    assert not east["healthy"] and east["last_error"] == "status poll failed: OverflowError"
    assert west["healthy"]
    assert router.post("/v1/chat/completions", json=CHAT).headers["x-meridian-region"] == "local/eu-west"
    assert metric(router, 'meridian_router_background_task_failures_total{task="status_poll"}') >= 1
    monkeypatch.setattr(Region, "apply_status", apply_status)
    router.app_state.regions.regions["local/us-east"].breaker.opened_at -= 60  # its open time is over
    repoll(router)
    assert router.get("/healthz").json()["healthy_regions"] == ["local/us-east", "local/eu-west"]


def test_a_failing_poll_loop_is_restarted_and_counted(fakes, monkeypatch):
    monkeypatch.setattr(supervised, "FIRST_RESTART_S", 0.05)
    with running_router(load_spec(REPO / "configs" / "local.yaml"), fakes) as router:
        table = router.app_state.regions
        poll_once = table.poll_once
        failures = {"left": 2}

        async def failing_then_fine() -> None:
            if failures["left"]:
                failures["left"] -= 1
                raise RecursionError("maximum recursion depth exceeded")
            await poll_once()

        monkeypatch.setattr(table, "poll_once", failing_then_fine)
        before = table.last_round_at
        deadline = time.monotonic() + 10
        while table.last_round_at == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert table.last_round_at > before  # polling again after two failures
        assert metric(router, 'meridian_router_background_task_failures_total{task="health_poll"}') == 2


def test_healthz_fails_when_the_view_of_the_regions_is_stale(router):
    table = router.app_state.regions
    assert router.get("/healthz").status_code == 200
    table.last_round_at -= 3600
    stale = router.get("/healthz")
    assert stale.status_code == 503 and stale.json()["status"] == "stale"


def test_supervise_restarts_with_a_growing_wait_and_stops_when_cancelled(monkeypatch):
    monkeypatch.setattr(supervised, "FIRST_RESTART_S", 0.01)
    runs: list[float] = []
    failures: list[str] = []

    async def scenario() -> None:
        async def run() -> None:
            runs.append(time.monotonic())
            raise ValueError("boom")

        task = asyncio.create_task(supervised.supervise("t", run, failures.append))
        while len(runs) < 4:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert failures[:3] == ["t", "t", "t"]
    gaps = [later - earlier for earlier, later in zip(runs, runs[1:], strict=False)]
    assert gaps[2] > gaps[0]  # 0.01, 0.02, 0.04 s


def spec_with(**router):  # type: ignore[no-untyped-def]
    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    data["router"].update(router)
    return parse_spec(data)


def open_by_a_failed_request(router: TestClient, fakes: FakeRegions) -> Region:
    east = router.app_state.regions.regions["local/us-east"]
    fakes["local-us-east"].mode = "error500"
    assert router.post("/v1/chat/completions", json=CHAT).headers["x-meridian-region"] == "local/eu-west"
    assert east.breaker.opened_by_requests
    fakes["local-us-east"].mode = "ok"
    fakes["local-us-east"].calls.clear()
    return east


def poll_half_open(router: TestClient, region: Region, until: Callable[[], bool], timeout_s: float) -> None:
    """Polls `region` with its breaker's open time over, until `until()` or `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not until() and time.monotonic() < deadline:
        region.breaker.opened_at = time.monotonic() - 120  # its open time is over
        repoll(router)
        time.sleep(0.02)


def test_a_region_whose_inference_fails_stays_out_until_an_inference_probe_is_answered(fakes):
    with running_router(spec_with(breaker_open_s=0.05), fakes) as router:
        east = router.app_state.regions.regions["local/us-east"]
        fakes["local-us-east"].mode = "error500"  # its /status stays fine
        assert router.post("/v1/chat/completions", json=CHAT).headers["x-meridian-region"] == "local/eu-west"
        assert east.breaker.is_open and east.breaker.opened_by_requests

        def probed_until(closed: bool) -> None:
            def settled() -> bool:
                return east.breaker.is_open == (not closed) and "v1/completions" in fakes["local-us-east"].calls

            poll_half_open(router, east, settled, timeout_s=10)
            assert settled(), "no inference probe settled the breaker"

        probed_until(closed=False)  # good polls, a failed probe: still open, for longer
        assert east.breaker.trips >= 2
        fakes["local-us-east"].mode = "ok"
        fakes["local-us-east"].calls.clear()
        probed_until(closed=True)
        assert router.post("/v1/chat/completions", json=CHAT).headers["x-meridian-region"] == "local/us-east"


def test_no_inference_probe_waits_on_a_replica_that_is_starting(fakes):
    """It would only wait for the start in the region's queue: the probe waits for a
    ready replica to be reported instead."""
    with running_router(spec_with(breaker_open_s=0.05), fakes) as router:
        east = open_by_a_failed_request(router, fakes)
        lost = scaled_to_zero().model_copy(update={"target": 1, "own_target": 1, "min_replicas": 1})
        fakes["local-us-east"].ready, fakes["local-us-east"].autoscaling = 0, lost  # its replica lost, one starting
        poll_half_open(router, east, lambda: False, timeout_s=0.2)
        assert east.starting_replicas == 1
        assert "v1/completions" not in fakes["local-us-east"].calls and east.breaker.is_open

        fakes["local-us-east"].ready = 1
        poll_half_open(router, east, lambda: not east.breaker.is_open, timeout_s=10)
        assert "v1/completions" in fakes["local-us-east"].calls and not east.breaker.is_open


def test_an_inference_probe_wakes_a_region_scaled_to_zero(fakes):
    """With no replica starting, the probe starts one, as a request would; else the
    region would stay out until every other region failed."""
    with running_router(spec_with(breaker_open_s=0.05), fakes) as router:
        east = open_by_a_failed_request(router, fakes)
        fakes["local-us-east"].ready, fakes["local-us-east"].autoscaling = 0, scaled_to_zero()
        poll_half_open(router, east, lambda: not east.breaker.is_open, timeout_s=10)
        assert "v1/completions" in fakes["local-us-east"].calls and not east.breaker.is_open


def test_a_request_that_fails_in_every_region_opens_no_breaker(router, fakes):
    for slug in ("local-us-east", "local-eu-west"):
        fakes[slug].mode = "error500"
    refused = router.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "upstream_error"
    assert router.get("/healthz").json()["healthy_regions"] == ["local/us-east", "local/eu-west"]


def test_failovers_stay_within_the_fleets_retry_budget(fakes):
    with running_router(spec_with(retry_budget_burst=1, retry_budget_ratio=0.0), fakes) as router:
        fakes["local-us-east"].mode = "refuse"
        assert router.post("/v1/chat/completions", json=CHAT).headers["x-meridian-region"] == "local/eu-west"
        router.app_state.regions.regions["local/us-east"].breaker.record_inference_success(time.monotonic() + 600)
        refused = router.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 503 and "failover budget is spent" in refused.json()["error"]["message"]
        assert fakes["local-eu-west"].calls.count("v1/chat/completions") == 1  # no second failover
        assert metric(router, "meridian_router_failovers_refused_total") == 1


def test_a_regions_error_keeps_the_engines_message_without_the_stacks_internals(router, fakes):
    fakes["local-us-east"].mode = "ray_error"
    answered = router.post("/v1/chat/completions", json=CHAT)
    assert answered.status_code == 400
    assert answered.json()["error"] == {
        "message": "max_tokens must be at most 1024",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_nothing_a_region_echoed_reaches_the_client_or_the_routers_status(router, fakes, caplog):
    secret = "my secret prompt"
    for slug in ("local-us-east", "local-eu-west"):
        fakes[slug].mode = "echo500"
    body = {"model": CHAT["model"], "messages": [{"role": "user", "content": secret}]}
    answered = router.post("/v1/chat/completions", json=body)
    assert answered.status_code == 502 and secret not in answered.text
    fakes["local-eu-west"].mode = "ok"
    assert router.post("/v1/chat/completions", json=body).status_code == 200  # us-east now blamed
    assert secret not in router.get("/regions").text
    assert secret not in caplog.text


@pytest.mark.parametrize("path", ["/regions", "/metrics", "/openapi.json"])
def test_with_api_keys_the_operational_endpoints_need_the_admin_token(fakes, monkeypatch, path):
    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    data["router"]["auth"] = {"keys": [{"name": "team", "sha256": digest("sk-team")}]}
    monkeypatch.delenv("MERIDIAN_ROUTER_ADMIN_TOKEN", raising=False)
    with running_router(parse_spec(data), fakes) as router:
        unset = router.get(path, headers={"Authorization": "Bearer sk-team"})
        assert unset.status_code == 403 and "MERIDIAN_ROUTER_ADMIN_TOKEN is unset" in unset.json()["error"]["message"]
    monkeypatch.setenv("MERIDIAN_ROUTER_ADMIN_TOKEN", "admin-token")
    with running_router(parse_spec(data), fakes) as router:
        for headers in ({}, {"Authorization": "Bearer sk-team"}, {"Authorization": "Bearer wrong"}):
            assert router.get(path, headers=headers).status_code == 401
        assert router.get(path, headers={"Authorization": "Bearer admin-token"}).status_code == 200
        assert router.get("/healthz").status_code == 200  # liveness stays open: it says nothing inside
    with running_router(load_spec(REPO / "configs" / "local.yaml"), fakes) as router:
        assert router.get(path).status_code == 200  # no keys: an open router, open about itself


def test_regions_that_lost_their_app_are_blamed_not_the_request(router, fakes):
    for slug in ("local-us-east", "local-eu-west"):
        fakes[slug].mode = "gone"  # Serve's 404 for a route prefix it no longer has
    refused = router.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_healthy_region"
    assert int(refused.headers["retry-after"]) >= 1
    assert router.get("/healthz").json()["healthy_regions"] == []


def test_an_inference_probe_asks_a_generating_model_never_an_embedding_one(fakes):
    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    data["models"].insert(0, {"id": "embedder", "source": {"kind": "packaged"}, "task": "embed"})
    fakes["local-us-east"].models = ["embedder", CHAT["model"]]
    fakes["local-us-east"].embed_models = ["embedder"]
    data["router"]["breaker_open_s"] = 0.05
    with running_router(parse_spec(data), fakes) as router:
        east = router.app_state.regions.regions["local/us-east"]
        east.mark_down("a failed request", by_request=True)
        deadline = time.monotonic() + 10
        while east.breaker.is_open:
            assert time.monotonic() < deadline, "the probe never closed the breaker"
            east.breaker.opened_at = time.monotonic() - 120
            repoll(router)
            time.sleep(0.02)
        east = fakes["local-us-east"]
        assert ("v1/completions", CHAT["model"]) in zip(east.calls, east.model_apps, strict=True)


def test_each_request_goes_to_its_models_own_app_in_the_region(fakes):
    """A region serves each model from an app of its own (deployments/model_app.py), at
    `<endpoint>/models/<model id>`; sent to another model's app, a request would fail."""
    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    data["models"].append({"id": "org/embedder", "source": {"kind": "packaged"}, "task": "embed"})
    for fake in fakes.regions.values():
        fake.models = [CHAT["model"], "org/embedder"]
    with running_router(parse_spec(data), fakes) as router:
        assert router.post("/v1/chat/completions", json=CHAT).status_code == 200
        embedded = router.post("/v1/embeddings", json={"model": "org/embedder", "input": "hi"})
        assert embedded.status_code == 200
    east = fakes["local-us-east"]
    reached = [(call, app) for call, app in zip(east.calls, east.model_apps, strict=True) if app is not None]
    assert reached == [("v1/chat/completions", CHAT["model"]), ("v1/embeddings", "org/embedder")]


def test_an_unexpected_error_in_an_inference_request_is_an_openai_shaped_500_with_nothing_internal(
    router, monkeypatch, caplog
):
    # Inference requests take their own way past FastAPI's routing (geo_router/live/inference_path.py).
    def broken_scorer(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("scorer state at 0xdeadbeef")

    monkeypatch.setattr("geo_router.live.admission.choose", broken_scorer)
    answered = router.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "req-1"})
    assert answered.status_code == 500 and answered.headers["x-request-id"] == "req-1"
    error = answered.json()["error"]
    assert error["message"] == "internal router error (RuntimeError); see the router log"
    assert "0xdeadbeef" not in answered.text and "Traceback" not in answered.text
    assert "unexpected router error" in caplog.text
