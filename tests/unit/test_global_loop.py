"""The global loop across clusters: it reads every region's /status, plans floors from
what regions could not place and from the fleet's warm minimum, and sends each
autoscaled region its floor with its own control token. A region that does not answer,
or answers outside its contract, is left out of the tick; the others still get theirs."""

from __future__ import annotations

import httpx
import pytest

from autoscaler.live.global_loop import GlobalLoop, fallback_order, floors_from
from autoscaler.live.heartbeat import Heartbeat, serve_health
from meridian_core.contracts import CapacityReport, EngineLoad, FleetFloor, RegionStatus, ReplicaCounts, ScalingView
from meridian_core.spec import PlatformSpec, parse_spec

SCALED = {"min_replicas": 0, "max_replicas": 4}
REGIONS = [
    {"name": "local/us-east", "location": {"lat": 39.0, "lon": -77.5}, "autoscaling": SCALED},
    {"name": "local/eu-west", "location": {"lat": 53.3, "lon": -6.3}, "autoscaling": SCALED},
    {"name": "local/ap-south", "location": {"lat": 19.1, "lon": 72.9}, "autoscaling": SCALED},
]


def spec_with(**sections: object) -> PlatformSpec:
    return parse_spec({"models": [{"id": "m"}], "regions": REGIONS, **sections})


def status(name: str, own: int, *, unplaced: int = 0, recent: int = 0, floored: int | None = None) -> RegionStatus:
    view = ScalingView(
        target=own if floored is None else floored,
        own_target=own,
        reason="test",
        ready=own,
        starting=0,
        cold_start_s=60.0,
        cold_start_measured=False,
        min_replicas=0,
        max_replicas=4,
        recent_requests=recent,
        at=1.0,
    )
    report = CapacityReport(unplaced_replicas=unplaced, reason="stockout in every zone", at=1.0) if unplaced else None
    return RegionStatus(
        region=name,
        models=["m"],
        replicas=ReplicaCounts(ready=own),
        autoscaling=view,
        engine=EngineLoad(),
        capacity=report,
    )


def test_unplaced_demand_goes_to_the_nearest_region_with_room():
    spec = spec_with()
    statuses = {"local/us-east": status("local/us-east", 4, unplaced=2), "local/eu-west": status("local/eu-west", 3)}
    statuses["local/ap-south"] = status("local/ap-south", 0)
    floors = floors_from(spec, statuses)
    assert {name: f.replicas for name, f in floors.items()} == {"local/eu-west": 4, "local/ap-south": 1}
    assert "local/us-east" in floors["local/eu-west"].reason


def test_only_the_spec_s_fallback_targets_are_acceptable():
    spec = spec_with(capacity={"fallback": [{"cloud": "local", "region": "ap-south"}]})
    assert fallback_order(spec)["local/us-east"] == ["local/ap-south"]
    assert fallback_order(spec_with())["local/us-east"] == ["local/eu-west", "local/ap-south"]  # nearest first


def test_floors_are_planned_from_the_policies_own_targets():
    """eu-west runs the floor it was given (3) but its own policy wants 1: the next floor
    is the same 3, not 3 + 2, so a shortfall that persists does not ratchet floors up."""
    spec = spec_with()
    statuses = {"local/us-east": status("local/us-east", 4, unplaced=2), "local/eu-west": status("local/eu-west", 1)}
    statuses["local/ap-south"] = status("local/ap-south", 0)
    assert floors_from(spec, statuses)["local/eu-west"].replicas == 3
    statuses["local/eu-west"] = status("local/eu-west", 1, floored=3)
    assert floors_from(spec, statuses)["local/eu-west"].replicas == 3


class Regions:
    """Each region's ingress as the global loop reaches it over HTTP."""

    def __init__(self, spec: PlatformSpec, statuses: dict[str, bytes | RegionStatus]):
        self.spec = spec
        self.statuses = statuses
        self.floors: dict[str, FleetFloor | None] = {}
        self.tokens_seen: dict[str, str] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        slug, _, path = request.url.path.lstrip("/").partition("/")
        region = self.spec.region(slug)
        if path == "status":
            answer = self.statuses.get(region.name)
            if answer is None:
                raise httpx.ConnectError("refused")
            body = answer if isinstance(answer, bytes) else answer.model_dump_json().encode()
            return httpx.Response(200, content=body)
        assert path == "fleet-floor"
        self.tokens_seen[region.name] = request.headers["authorization"]
        self.floors[region.name] = FleetFloor.model_validate_json(request.content) if request.method == "PUT" else None
        return httpx.Response(204)


@pytest.mark.parametrize("bad_answer", [None, b'{"region": "x", "running": Infinity}', b"[" * 100_000])
def test_a_region_that_does_not_answer_or_breaks_its_contract_is_left_out_of_the_tick(bad_answer):
    spec = spec_with(fleet={"min_warm_replicas": 1})
    statuses = {"local/us-east": status("local/us-east", 0, recent=50), "local/eu-west": status("local/eu-west", 0)}
    statuses["local/ap-south"] = bad_answer
    regions = Regions(spec, statuses)
    tokens = {"local/us-east": "east-token", "local/eu-west": "west-token", "local/ap-south": "south-token"}
    loop = GlobalLoop(spec, tokens, httpx.Client(transport=httpx.MockTransport(regions.handle)))
    floors = loop.tick()
    assert floors["local/us-east"].replicas == 1  # the warm minimum goes where the demand was
    assert regions.floors == {"local/us-east": floors["local/us-east"], "local/eu-west": None}  # eu-west's lifted
    assert regions.tokens_seen == {"local/us-east": "Bearer east-token", "local/eu-west": "Bearer west-token"}


def test_the_loops_healthz_fails_once_its_last_tick_is_stale():
    now = [100.0]
    heartbeat = Heartbeat(stale_after_s=60, clock=lambda: now[0])
    server = serve_health(heartbeat, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok", "last_tick_age_s": 0.0}
        now[0] += 61
        stale = httpx.get(f"{url}/healthz", timeout=5)
        assert stale.status_code == 503 and stale.json()["status"] == "stale"
        heartbeat.beat()
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{url}/other", timeout=5).status_code == 404
    finally:
        server.shutdown()
