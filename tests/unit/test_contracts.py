"""Every cross-process message: it survives a round trip, and garbage is refused with a
MalformedMessage that names fields, never values."""

from __future__ import annotations

import json

import pytest

from meridian_core.contracts import (
    MAX_MESSAGE_BYTES,
    EngineLoad,
    FleetFloor,
    MalformedMessage,
    RegionStatus,
    ReplicaCounts,
    ReplicaReport,
    RouterRegion,
    RouterRegions,
    ScalingView,
    parse,
)

VIEW = ScalingView(
    target=3,
    own_target=3,
    reason="short forecast 2.00 req/s",
    ready=2,
    starting=1,
    cold_start_s=88.5,
    cold_start_measured=True,
    min_replicas=0,
    max_replicas=4,
    recent_requests=120,
    at=1_700_000_000.5,
)
STATUS = RegionStatus(
    region="local/us-east",
    models=["smollm2-135m-instruct"],
    replicas=ReplicaCounts(ready=2, starting=1),
    autoscaling=VIEW,
    engine=EngineLoad(running=5, waiting=2, kv_cache_usage=0.4),
    per_replica=[EngineLoad(running=3, waiting=1, kv_cache_usage=0.4), EngineLoad(running=2, waiting=1)],
)
ROUTED = RouterRegion(
    name="local/us-east",
    healthy=True,
    breaker_open=False,
    ready_replicas=2,
    starting_replicas=1,
    models=["smollm2-135m-instruct"],
    in_flight=4,
    status=STATUS,
    last_poll_age_s=0.2,
)
MESSAGES = [
    VIEW,
    STATUS,
    RouterRegions(regions=[ROUTED, RouterRegion(**{**ROUTED.model_dump(), "status": None, "healthy": False})]),
    ReplicaReport(running=3.0, waiting=1.0, kv_cache_usage=0.2, arrived_total=1e6, ttft_p95_s=0.4),
    FleetFloor(replicas=2, reason="serves gcp/europe-west4: out of capacity there"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_through_json_and_through_a_mapping(message) -> None:
    kind = type(message)
    assert parse(kind, message.model_dump_json()) == message
    assert parse(kind, message.model_dump_json().encode()) == message
    assert parse(kind, json.loads(message.model_dump_json())) == message


GARBAGE = [
    (ScalingView, {**VIEW.model_dump(), "target": -1}, "target"),
    (ScalingView, {**VIEW.model_dump(), "target": 10**12}, "target"),
    (ScalingView, {**VIEW.model_dump(), "target": "3"}, "target"),
    (ScalingView, {**VIEW.model_dump(), "reason": "x" * 10_000}, "reason"),
    (ScalingView, {**VIEW.model_dump(), "injected": 1}, "injected"),
    (ScalingView, {"target": 1}, "reason"),
    (EngineLoad, {"running": 1, "kv_cache_usage": 1.5}, "kv_cache_usage"),
    (ReplicaReport, {"running": float("inf")}, "running"),
    (ReplicaReport, {"ttft_p95_s": float("nan")}, "ttft_p95_s"),
    (FleetFloor, {"replicas": 2.5, "reason": "x"}, "replicas"),
    (RouterRegions, {"regions": [{**ROUTED.model_dump(), "in_flight": -3}]}, "regions.0.in_flight"),
    (RouterRegions, {"regions": [{**ROUTED.model_dump(), "endpoint": "http://10.0.0.1"}]}, "endpoint"),
]


@pytest.mark.parametrize(("kind", "data", "field"), GARBAGE)
def test_garbage_is_refused_naming_the_field(kind, data, field) -> None:
    with pytest.raises(MalformedMessage, match=field) as refused:
        parse(kind, data)
    assert refused.value.contract == kind.__name__


@pytest.mark.parametrize(
    "raw",
    [
        b'{"region": "r", "models": [], "replicas": {"ready": Infinity}, "engine": {}}',
        b'{"region": "r", "models": [], "replicas": {"ready": 1e999}, "engine": {}}',
        b'{"region": "r", "models": [], "replicas": {"ready": 1}, "engine": {"running": NaN}}',
        b"[" * 100_000 + b"]" * 100_000,
        b"not json",
        b"",
        # A well-formed status, but over the size cap.
        b'{"region": "r", "models": [], "replicas": {"ready": 1}, "engine": {}}' + b" " * MAX_MESSAGE_BYTES,
    ],
    ids=["infinity", "overflow", "nan", "deep", "not-json", "empty", "over-cap"],
)
def test_a_hostile_status_body_is_refused_not_raised_as_anything_else(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse(RegionStatus, raw)


def test_the_refusal_names_fields_but_never_echoes_values() -> None:
    secret = "prompt text a client sent"
    with pytest.raises(MalformedMessage) as refused:
        parse(ScalingView, {**VIEW.model_dump(), "reason": 7, "injected": secret})
    assert secret not in str(refused.value)
    assert "reason" in str(refused.value) and "injected" in str(refused.value)
