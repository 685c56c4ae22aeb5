"""AwsProvider through boto3 against moto in server mode, on loopback.

boto3 reaches moto through tests/emulated_clouds/aws.py, which passes everything through
except the operations a test overrides: moto never refuses a launch, so stockouts and
quota refusals are AWS's own error XML served by the proxy. Spot interruptions and
their two-minute notices come from the emulator too (`interrupt`, `notice_interruption`).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest

from capacity.live.aws import MANAGED_TAG, PLATFORM_TAG, AwsProvider
from capacity.live.bootstrap import RayJoin, ray_join_script
from capacity.model import CapacityError, EventKind, Market, NodeState, Placement, ProviderError
from tests.emulated_clouds.aws import (
    AWS_REGION,
    Answer,
    FaultProxy,
    ec2_error,
    interrupt,
    moto_behind_proxy,
    notice_interruption,
    spot_launch,
    spot_requests_xml,
)

REGION = AWS_REGION
IMAGE = "ami-12c6146b"  # one of moto's default AMIs
JOIN = RayJoin(head_address="10.0.0.5:6379", region_slug="aws-us-east-1", labels={"meridian.io/pool": "gpu"})


@dataclass
class Cloud:
    proxy: FaultProxy
    session: boto3.session.Session  # one for the module: it loads EC2's service model once
    ec2: object  # a plain boto3 EC2 client, as an operator outside Meridian would use

    def provider(self, platform: str) -> AwsProvider:
        return AwsProvider(
            region=REGION,
            platform=platform,
            join=JOIN,
            image_id=IMAGE,
            session=self.session,
            endpoint_url=self.proxy.url,
        )


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    with moto_behind_proxy() as proxy:
        session = boto3.session.Session()
        yield Cloud(proxy, session, session.client("ec2", region_name=REGION, endpoint_url=proxy.url))


@pytest.fixture
def proxy(cloud: Cloud) -> Iterator[FaultProxy]:
    cloud.proxy.clear()
    yield cloud.proxy
    cloud.proxy.clear()


@pytest.fixture
def provider(cloud: Cloud, request: pytest.FixtureRequest) -> AwsProvider:
    # One platform per test: ownership tags keep the tests' instances apart in one moto.
    return cloud.provider(platform=request.node.name.replace("[", "-").rstrip("]"))


def spot(zone: str = "us-east-1a") -> Placement:
    return Placement("aws", REGION, zone, "p4d.24xlarge", Market.SPOT)


def on_demand(zone: str = "us-east-1b") -> Placement:
    return Placement("aws", REGION, zone, "g5.xlarge", Market.ON_DEMAND)


def describe(cloud: Cloud, instance_id: str) -> dict:
    reply = cloud.ec2.describe_instances(InstanceIds=[instance_id])
    return reply["Reservations"][0]["Instances"][0]


def test_acquire_asks_for_up_to_count(proxy: FaultProxy, provider: AwsProvider) -> None:
    provider.acquire(on_demand(), count=3)

    (run,) = [params for operation, params in zip(proxy.seen, proxy.params, strict=True) if operation == "RunInstances"]
    assert (run["MinCount"], run["MaxCount"]) == (["1"], ["3"])
    assert not any(key.startswith("InstanceMarketOptions") for key in run)  # on-demand


def test_acquire_list_release(cloud: Cloud, provider: AwsProvider) -> None:
    launched = provider.acquire(on_demand()) + provider.acquire(on_demand())

    assert {node.placement for node in launched} == {on_demand()}
    assert {node.id for node in provider.nodes()} == {node.id for node in launched}
    assert all(node.state in (NodeState.PENDING, NodeState.RUNNING) for node in provider.nodes())

    provider.release(launched[0].id)

    assert [node.id for node in provider.nodes()] == [launched[1].id]
    assert describe(cloud, launched[0].id)["State"]["Name"] == "terminated"
    events = provider.events()
    assert [(event.kind, event.node_id) for event in events] == [
        (EventKind.LAUNCHED, launched[0].id),
        (EventKind.LAUNCHED, launched[1].id),
        (EventKind.TERMINATED, launched[0].id),
    ]
    assert provider.events() == []


def test_instances_are_tagged_as_the_platforms(cloud: Cloud, provider: AwsProvider) -> None:
    (node,) = provider.acquire(on_demand())

    tags = {tag["Key"]: tag["Value"] for tag in describe(cloud, node.id)["Tags"]}

    assert tags[MANAGED_TAG] == "true"
    assert tags[PLATFORM_TAG] == provider.platform


def test_untagged_and_foreign_instances_are_never_listed_or_released(cloud: Cloud, provider: AwsProvider) -> None:
    untagged = cloud.ec2.run_instances(ImageId=IMAGE, InstanceType="g5.xlarge", MinCount=1, MaxCount=1)
    foreign = cloud.provider(platform="someone-else").acquire(on_demand())[0].id
    untagged_id = untagged["Instances"][0]["InstanceId"]
    (mine,) = provider.acquire(on_demand())

    assert [node.id for node in provider.nodes()] == [mine.id]
    for instance_id in (untagged_id, foreign):
        with pytest.raises(KeyError):
            provider.release(instance_id)
        assert describe(cloud, instance_id)["State"]["Name"] in ("pending", "running")
    with pytest.raises(KeyError):
        provider.release("i-0123456789abcdef0")


def test_spot_is_launched_with_market_options(cloud: Cloud, proxy: FaultProxy, provider: AwsProvider) -> None:
    (node,) = provider.acquire(spot())

    instance = describe(cloud, node.id)

    assert instance["InstanceLifecycle"] == "spot"
    assert instance["Placement"]["AvailabilityZone"] == "us-east-1a"
    assert instance["InstanceType"] == "p4d.24xlarge"
    assert node.placement.market is Market.SPOT
    # moto does not echo SpotOptions back; what was asked for is in the request itself.
    (run,) = [params for operation, params in zip(proxy.seen, proxy.params, strict=True) if operation == "RunInstances"]
    assert run["InstanceMarketOptions.MarketType"] == ["spot"]
    assert run["InstanceMarketOptions.SpotOptions.SpotInstanceType"] == ["one-time"]
    assert run["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == ["terminate"]


def test_user_data_is_the_ray_join_script(cloud: Cloud, provider: AwsProvider) -> None:
    (node,) = provider.acquire(spot("us-east-1c"))

    encoded = cloud.ec2.describe_instance_attribute(InstanceId=node.id, Attribute="userData")["UserData"]["Value"]
    script = base64.b64decode(encoded).decode()

    # The node joins Ray under the label it is listed with, which is how the capacity loop finds it there.
    assert node.ray_label is not None and node.ray_label.startswith("meridian-aws-us-east-1-")
    assert script == ray_join_script(JOIN, cloud="aws", zone="us-east-1c", market="spot", node_label=node.ray_label)
    assert [n.ray_label for n in provider.nodes()] == [node.ray_label]
    assert script.startswith("#!/bin/bash\n")
    assert "--address=10.0.0.5:6379" in script
    assert '{"region:aws-us-east-1": 1000}' in script
    assert "meridian.io/region=aws-us-east-1" in script
    assert "meridian.io/pool=gpu" in script


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("InsufficientInstanceCapacity", 500, EventKind.STOCKOUT),
        ("VcpuLimitExceeded", 400, EventKind.QUOTA_EXCEEDED),
        ("MaxSpotInstanceCountExceeded", 400, EventKind.QUOTA_EXCEEDED),
    ],
)
def test_refusals_are_typed(proxy: FaultProxy, provider: AwsProvider, code: str, status: int, kind: EventKind) -> None:
    proxy.answer("RunInstances", ec2_error(code, f"We currently do not have sufficient capacity ({code}).", status))

    with pytest.raises(CapacityError) as refused:
        provider.acquire(spot("us-east-1b"))

    assert refused.value.event.kind is kind
    assert refused.value.event.placement == spot("us-east-1b")
    assert refused.value.event.message.startswith(f"{code}: ")
    assert proxy.seen.count("RunInstances") == 1  # no retry: placement falls back instead
    assert provider.nodes() == []


def test_a_refusal_can_apply_to_spot_launches_only(proxy: FaultProxy, provider: AwsProvider) -> None:
    proxy.answer("RunInstances", ec2_error("InsufficientInstanceCapacity", "No spot capacity.", 500), when=spot_launch)

    with pytest.raises(CapacityError):
        provider.acquire(spot())
    (node,) = provider.acquire(on_demand())

    assert [n.id for n in provider.nodes()] == [node.id]


@pytest.mark.parametrize(
    ("operation", "code"),
    [
        ("RunInstances", "InvalidAMIID.NotFound"),
        ("RunInstances", "UnauthorizedOperation"),
        ("DescribeInstances", "AuthFailure"),
    ],
)
def test_other_errors_are_not_capacity_refusals_but_name_the_region_and_the_call(
    proxy: FaultProxy, provider: AwsProvider, operation: str, code: str
) -> None:
    proxy.answer(operation, ec2_error(code, "refused"))

    with pytest.raises(ProviderError) as failed:
        provider.acquire(on_demand()) if operation == "RunInstances" else provider.nodes()

    assert str(failed.value) == f"aws/{REGION}: {operation} failed: {code}"
    assert failed.value.__cause__ is None and failed.value.__suppress_context__  # one line, no SDK traceback


def test_spot_interruption_is_a_preempted_event(provider: AwsProvider) -> None:
    (kept, lost) = provider.acquire(spot()) + provider.acquire(spot())
    provider.events()

    interrupt(lost.id)

    events = provider.events()
    assert [(event.kind, event.node_id) for event in events] == [(EventKind.PREEMPTED, lost.id)]
    assert events[0].placement == spot()
    assert "Server.SpotInstanceTermination" in events[0].message
    assert provider.events() == []
    assert [node.id for node in provider.nodes()] == [kept.id]


def test_interruption_notice_drains_the_node(proxy: FaultProxy, provider: AwsProvider) -> None:
    (node,) = provider.acquire(spot())
    provider.events()
    notice_interruption(proxy, node.id)

    events = provider.events()

    assert [(event.kind, event.node_id) for event in events] == [(EventKind.PREEMPTION_NOTICE, node.id)]
    assert events[0].message.startswith("marked-for-termination")
    assert provider.events() == []
    assert [(n.id, n.state) for n in provider.nodes()] == [(node.id, NodeState.DRAINING)]


def test_spot_request_interrupted_by_price_is_preempted(proxy: FaultProxy, provider: AwsProvider) -> None:
    (node,) = provider.acquire(spot())
    provider.events()
    message = "Your Spot Instance was terminated because the Spot price exceeded your maximum price."
    answer = spot_requests_xml({node.id: "us-east-1a"}, "instance-terminated-by-price", message)
    proxy.answer("DescribeSpotInstanceRequests", Answer(200, answer))

    events = provider.events()

    assert [(event.kind, event.node_id) for event in events] == [(EventKind.PREEMPTED, node.id)]
    assert events[0].message == f"instance-terminated-by-price: {message}"
    assert provider.events() == []


def test_foreign_placement_is_rejected(provider: AwsProvider) -> None:
    with pytest.raises(ValueError, match="cannot place"):
        provider.acquire(Placement("gcp", REGION, "us-east-1a", "g5.xlarge", Market.SPOT))


def test_spot_quotes_are_the_regions_spot_price_history(provider: AwsProvider) -> None:
    quotes = provider.spot_quotes({"m7i.2xlarge"})
    assert quotes and {(q.cloud, q.region, q.instance_type) for q in quotes} == {("aws", REGION, "m7i.2xlarge")}
    assert all(q.zone.startswith(REGION) and q.usd_per_h > 0 for q in quotes)
