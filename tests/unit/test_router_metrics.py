"""The router's breaker and rate-limit metrics: what the dashboard's breaker and
refusal panels read (platform/observability/grafana/meridian-router.json)."""

from __future__ import annotations

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from geo_router.live.auth import digest
from geo_router.live.breaker import CircuitBreaker
from geo_router.live.regions import Region
from geo_router.policy.ratelimit import RateLimits
from meridian_core.geo import LatLon
from meridian_core.spec import parse_spec

from .fake_regions import CHAT, FakeRegions, running_router

EAST, WEST = "local/us-east", "local/eu-west"
ALPHA, BETA, ADMIN = "sk-alpha-0123456789", "sk-beta-9876543210", "admin-token"

pytestmark = pytest.mark.timeout(60)


def spec_with(repo, **router):
    data = yaml.safe_load((repo / "configs" / "local.yaml").read_text())
    data["router"].update(router)
    return parse_spec(data)


def scrape(router: TestClient) -> dict[tuple[str, frozenset], float]:
    """Every sample on the router's /metrics, by name and labels."""
    text = router.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def repoll(router: TestClient) -> None:
    router.portal.call(router.app_state.regions.poll_once)


@pytest.fixture
def fakes() -> FakeRegions:
    return FakeRegions()


def test_breaker_state_and_trips_per_region(repo, fakes):
    # Open for 0 s: the next good poll closes the breaker, so the test needs no sleep.
    with running_router(spec_with(repo, breaker_open_s=0.0), fakes) as router:
        samples = scrape(router)
        for region in (EAST, WEST):
            assert value(samples, "meridian_router_region_breaker_open", region=region) == 0
            assert value(samples, "meridian_router_region_breaker_trips_total", region=region) == 0

        fakes["local-us-east"].mode = "refuse"
        assert router.post("/v1/chat/completions", json=CHAT).headers["x-meridian-region"] == WEST
        repoll(router)  # fails again while open: not another trip
        samples = scrape(router)
        assert value(samples, "meridian_router_region_breaker_open", region=EAST) == 1
        assert value(samples, "meridian_router_region_breaker_trips_total", region=EAST) == 1
        assert value(samples, "meridian_router_region_breaker_open", region=WEST) == 0
        assert value(samples, "meridian_router_region_breaker_trips_total", region=WEST) == 0

        fakes["local-us-east"].mode = "ok"
        repoll(router)
        assert value(scrape(router), "meridian_router_region_breaker_open", region=EAST) == 0
        fakes["local-us-east"].mode = "refuse"
        repoll(router)
        samples = scrape(router)
        assert value(samples, "meridian_router_region_breaker_open", region=EAST) == 1
        assert value(samples, "meridian_router_region_breaker_trips_total", region=EAST) == 2


def test_a_trip_is_the_failure_that_opens_the_breaker():
    trips: list[str] = []
    region = Region("r", LatLon(0, 0), "http://r", CircuitBreaker(failure_threshold=2), on_breaker_trip=trips.append)
    region.mark_down("first failure")
    assert trips == [] and not region.breaker.is_open
    region.mark_down("second failure")
    region.mark_down("third failure")
    assert trips == ["r"] and region.breaker.is_open


def test_rate_limit_refusals_are_counted_by_the_limit_that_refused(repo, fakes, monkeypatch):
    monkeypatch.setenv("MERIDIAN_ROUTER_ADMIN_TOKEN", ADMIN)  # with keys, /metrics is for operators
    keys = [
        {"name": "alpha", "sha256": digest(ALPHA), "requests_per_minute": 1},
        {"name": "beta", "sha256": digest(BETA), "tokens_per_minute": 600},
    ]
    with running_router(spec_with(repo, auth={"keys": keys}), fakes) as router:
        samples = scrape(router)
        for limit in ("requests", "tokens"):
            assert value(samples, "meridian_router_rate_limited_requests_total", limit=limit) == 0

        alpha = {"Authorization": f"Bearer {ALPHA}"}
        assert [router.post("/v1/chat/completions", json=CHAT, headers=alpha).status_code for _ in range(2)] == [
            200,
            429,
        ]
        beta = {"Authorization": f"Bearer {BETA}"}
        too_big = {**CHAT, "max_tokens": 5000}
        assert router.post("/v1/chat/completions", json=too_big, headers=beta).status_code == 429
        assert router.post("/v1/chat/completions", json=too_big, headers=beta).status_code == 429

        samples = scrape(router)
        assert value(samples, "meridian_router_rate_limited_requests_total", limit="requests") == 1
        assert value(samples, "meridian_router_rate_limited_requests_total", limit="tokens") == 2


def test_the_limiting_bucket_is_the_one_with_the_longest_wait():
    limits = RateLimits([("both", 2, 100), ("tokens", None, 100)])
    assert limits.admit("both", 10, now=0) == 0 and limits.admit("both", 10, now=0) == 0
    assert limits.admit("both", 10, now=0) > 0
    assert limits.limiting("both", 10, now=0) == "requests"  # requests empty, tokens left
    assert limits.limiting("both", 1000, now=0) == "tokens"  # never fits: an infinite wait
    assert limits.limiting("tokens", 1000, now=0) == "tokens"
