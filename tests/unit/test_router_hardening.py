"""What the router audit found, each fixed at its depth: the health poll survives any
error (one region's bad answer marks that region down; a failed loop is restarted,
logged and counted, and /healthz says when the view of the regions is stale), a body
nested too deeply is a 400, session identifiers are kept as fixed-size keys."""

from __future__ import annotations

import asyncio
import time

import pytest

from geo_router.live import supervised
from geo_router.live.regions import Region
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
