"""GcpProvider through google-cloud-compute against the local Compute endpoint.

The real client (REST transport) reaches tests/emulated_clouds/gcp.py with
`client_options={"api_endpoint": "http://127.0.0.1:<port>"}` and anonymous
credentials: the transport keeps an explicit http:// scheme, so no TLS is needed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from capacity.live.bootstrap import RayJoin, ray_join_script
from capacity.live.gcp import MANAGED_LABEL, PLATFORM_LABEL, GcpOperationError, GcpProvider
from capacity.model import CapacityError, EventKind, Market, NodeState, Placement, ProviderError
from tests.emulated_clouds.gcp import FakeComputeApi, Refusal, quota_exceeded, spot_insert, stockout

PROJECT = "meridian-test"
REGION = "us-central1"
ZONES = ["us-central1-a", "us-central1-b", "us-central1-c"]
JOIN = RayJoin(head_address="10.128.0.2:6379", region_slug="gcp-us-central1")
IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu124"


@pytest.fixture(scope="module")
def api() -> Iterator[FakeComputeApi]:
    fake = FakeComputeApi(PROJECT, {REGION: ZONES}).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fresh(api: FakeComputeApi) -> Iterator[FakeComputeApi]:
    api.refuse_inserts(None)
    api.polls_until_done = 1
    yield api
    api.refuse_inserts(None)


def make_provider(api: FakeComputeApi, platform: str) -> GcpProvider:
    return GcpProvider(
        project=PROJECT,
        region=REGION,
        platform=platform,
        join=JOIN,
        source_image=IMAGE,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": api.endpoint},
    )


@pytest.fixture
def provider(fresh: FakeComputeApi, request: pytest.FixtureRequest) -> GcpProvider:
    # One platform per test: ownership labels keep the tests' instances apart.
    return make_provider(fresh, re.sub(r"[^a-z0-9_-]", "-", request.node.name.lower())[:63])


def spot(zone: str = "us-central1-a") -> Placement:
    return Placement("gcp", REGION, zone, "a2-highgpu-1g", Market.SPOT)


def on_demand(zone: str = "us-central1-b") -> Placement:
    return Placement("gcp", REGION, zone, "g2-standard-8", Market.ON_DEMAND)


def body_of(api: FakeComputeApi, node_id: str) -> dict:
    (body,) = [body for body in api.inserted if body["name"] == node_id.split("/")[1]]
    return body


def test_spot_insert_body(fresh: FakeComputeApi, provider: GcpProvider) -> None:
    (node,) = provider.acquire(spot())

    body = body_of(fresh, node.id)
    assert body["scheduling"]["provisioningModel"] == "SPOT"
    assert body["scheduling"]["instanceTerminationAction"] == "DELETE"
    assert body["machineType"] == "zones/us-central1-a/machineTypes/a2-highgpu-1g"
    assert body["labels"][MANAGED_LABEL] == "true"
    assert body["labels"][PLATFORM_LABEL] == provider.platform
    (item,) = body["metadata"]["items"]
    assert item["key"] == "startup-script"
    # The node joins Ray labelled with its VM name, which is how the capacity loop finds it there.
    assert node.ray_label == body["name"] and [n.ray_label for n in provider.nodes()] == [body["name"]]
    assert item["value"] == ray_join_script(
        JOIN, cloud="gcp", zone="us-central1-a", market="spot", node_label=body["name"]
    )
    assert "--address=10.128.0.2:6379" in item["value"]
    assert node.placement == spot()
    # No external IP: an interface with no access config reaches only the VPC.
    (interface,) = body["networkInterfaces"]
    assert interface["network"] == "global/networks/default" and "accessConfigs" not in interface


def test_on_demand_insert_body(fresh: FakeComputeApi, provider: GcpProvider) -> None:
    (node,) = provider.acquire(on_demand())

    scheduling = body_of(fresh, node.id)["scheduling"]
    assert scheduling["provisioningModel"] == "STANDARD"
    assert "instanceTerminationAction" not in scheduling
    assert node.placement == on_demand()


def test_acquire_waits_for_the_operation(fresh: FakeComputeApi, provider: GcpProvider) -> None:
    fresh.polls_until_done = 2

    (node,) = provider.acquire(spot("us-central1-c"))

    (insert,) = [
        op
        for (zone, _), op in fresh.operations.items()
        if op["operationType"] == "insert" and op["targetLink"].endswith("/" + node.id.split("/")[1])
    ]
    assert insert["status"] == "DONE"
    assert fresh.polls[insert["name"]] == 3  # PENDING, PENDING, then DONE
    assert node.state is NodeState.RUNNING


def test_acquire_list_release(fresh: FakeComputeApi, provider: GcpProvider) -> None:
    launched = provider.acquire(spot("us-central1-b"), count=2)

    assert len(launched) == 2
    assert sorted(node.id for node in provider.nodes()) == sorted(node.id for node in launched)

    provider.release(launched[0].id)

    assert [node.id for node in provider.nodes()] == [launched[1].id]
    assert ("us-central1-b", launched[0].id.split("/")[1]) not in fresh.instances
    assert [(event.kind, event.node_id) for event in provider.events()] == [
        (EventKind.LAUNCHED, launched[0].id),
        (EventKind.LAUNCHED, launched[1].id),
        (EventKind.TERMINATED, launched[0].id),
    ]
    assert provider.events() == []


def test_unlabeled_and_foreign_instances_are_never_listed_or_released(
    fresh: FakeComputeApi, provider: GcpProvider
) -> None:
    client = compute_v1.InstancesClient(
        credentials=AnonymousCredentials(), client_options={"api_endpoint": fresh.endpoint}
    )
    client.insert_unary(
        project=PROJECT,
        zone="us-central1-a",
        instance_resource=compute_v1.Instance(
            name="hand-made", machine_type="zones/us-central1-a/machineTypes/n2-standard-4"
        ),
    )
    (foreign,) = make_provider(fresh, "someone-else").acquire(spot())
    (mine,) = provider.acquire(spot())

    assert [node.id for node in provider.nodes()] == [mine.id]
    for node_id in ("us-central1-a/hand-made", foreign.id):
        with pytest.raises(KeyError):
            provider.release(node_id)
        assert ("us-central1-a", node_id.split("/")[1]) in fresh.instances
    for bad in ("us-central1-a/no-such-vm", "europe-west4-a/hand-made", "hand-made"):
        with pytest.raises(KeyError):
            provider.release(bad)


@pytest.mark.parametrize(
    ("refusal", "kind"),
    [
        (stockout(), EventKind.STOCKOUT),
        (
            Refusal(
                "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
                "The zone 'projects/meridian-test/zones/us-central1-a' does not have enough resources available "
                "to fulfill the request. '(resource type:compute)'.",
                503,
            ),
            EventKind.STOCKOUT,
        ),
        (
            Refusal("QUOTA_EXCEEDED", "Quota 'NVIDIA_A100_GPUS' exceeded. Limit: 0.0 in region us-central1.", 403),
            EventKind.QUOTA_EXCEEDED,
        ),
        (quota_exceeded("PREEMPTIBLE_NVIDIA_A100_GPUS", REGION), EventKind.QUOTA_EXCEEDED),
    ],
    ids=["pool-exhausted", "pool-exhausted-with-details", "quota-in-operation", "quota-http-403"],
)
def test_refusals_are_typed(fresh: FakeComputeApi, provider: GcpProvider, refusal: Refusal, kind: EventKind) -> None:
    fresh.refuse_inserts(refusal)

    with pytest.raises(CapacityError) as refused:
        provider.acquire(spot(), count=2)

    assert refused.value.event.kind is kind
    assert refused.value.event.placement == spot()
    assert refusal.message in refused.value.event.message
    assert "127.0.0.1" not in refused.value.event.message  # the API's words, not the endpoint it was asked at
    assert provider.nodes() == []


def test_a_refusal_can_apply_to_spot_inserts_only(fresh: FakeComputeApi, provider: GcpProvider) -> None:
    fresh.refuse_inserts(stockout(), when=spot_insert)

    with pytest.raises(CapacityError):
        provider.acquire(spot())
    (node,) = provider.acquire(on_demand())

    assert [n.id for n in provider.nodes()] == [node.id]


def test_a_refusal_after_some_inserts_returns_what_started(fresh: FakeComputeApi, provider: GcpProvider) -> None:
    fresh.refuse_inserts(
        Refusal("ZONE_RESOURCE_POOL_EXHAUSTED", "The zone does not have enough resources.", 503), after=1
    )

    launched = provider.acquire(spot(), count=3)

    assert len(launched) == 1
    assert [node.id for node in provider.nodes()] == [launched[0].id]
    assert sum(1 for body in fresh.inserted if body.get("labels", {}).get(PLATFORM_LABEL) == provider.platform) == 2


def test_other_operation_errors_are_not_capacity_refusals(fresh: FakeComputeApi, provider: GcpProvider) -> None:
    fresh.refuse_inserts(Refusal("UNSUPPORTED_OPERATION", "a2-highgpu-1g is not available for this project.", 400))

    with pytest.raises(GcpOperationError, match="UNSUPPORTED_OPERATION"):
        provider.acquire(spot())


def test_a_permission_error_names_the_region_and_the_call(fresh: FakeComputeApi, provider: GcpProvider) -> None:
    fresh.refuse_inserts(Refusal("PERMISSION_DENIED", "Required 'compute.instances.create' permission", 403, True))

    with pytest.raises(ProviderError) as failed:
        provider.acquire(spot())

    assert str(failed.value) == f"gcp/{REGION}: instances.insert failed: 403 Forbidden"
    assert failed.value.__cause__ is None  # one line, no SDK traceback


def test_preemption_is_reported_once(fresh: FakeComputeApi, provider: GcpProvider) -> None:
    kept, lost = provider.acquire(spot("us-central1-c"), count=2)
    provider.events()

    fresh.preempt("us-central1-c", lost.id.split("/")[1])

    events = provider.events()
    assert [(event.kind, event.node_id) for event in events] == [(EventKind.PREEMPTED, lost.id)]
    assert events[0].placement == spot("us-central1-c")
    assert events[0].message == "Instance was preempted."
    assert provider.events() == []
    assert [node.id for node in provider.nodes()] == [kept.id]


def test_a_preemption_under_way_is_a_notice_and_the_node_drains_until_it_goes(
    fresh: FakeComputeApi, provider: GcpProvider
) -> None:
    kept, warned = provider.acquire(spot("us-central1-c"), count=2)
    provider.events()

    fresh.warn_of_preemption("us-central1-c", warned.id.split("/")[1])

    events = provider.events()
    assert [(event.kind, event.node_id) for event in events] == [(EventKind.PREEMPTION_NOTICE, warned.id)]
    assert provider.events() == []  # once
    states = {node.id: node.state for node in provider.nodes()}
    assert states == {kept.id: NodeState.RUNNING, warned.id: NodeState.DRAINING}

    fresh.preempt("us-central1-c", warned.id.split("/")[1])

    assert [(event.kind, event.node_id) for event in provider.events()] == [(EventKind.PREEMPTED, warned.id)]
    assert provider.events() == []
    assert [node.id for node in provider.nodes()] == [kept.id]


def test_preemption_of_someone_elses_vm_is_not_reported(fresh: FakeComputeApi, provider: GcpProvider) -> None:
    (foreign,) = make_provider(fresh, "another-platform").acquire(spot("us-central1-b"))
    provider.acquire(spot("us-central1-b"))
    provider.events()

    fresh.preempt("us-central1-b", foreign.id.split("/")[1])

    assert provider.events() == []
