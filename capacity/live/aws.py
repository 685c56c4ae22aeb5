"""AWS EC2 nodes for one Meridian region, through boto3.

Ownership is by tag: every instance this provider launches carries
`meridian:managed=true` and `meridian:platform=<platform>`; `nodes()` filters on both
and checks them again on what comes back, and `release()` refuses (KeyError) any
instance without them, so instances someone else runs in the account are never
listed or terminated.

Spot capacity is bought with `RunInstances` + `InstanceMarketOptions` (one-time,
terminate on interruption). Refusals become `CapacityError`s:
`InsufficientInstanceCapacity` (and the other Insufficient*Capacity codes) is a
STOCKOUT; `VcpuLimitExceeded`, `MaxSpotInstanceCountExceeded` and
`InstanceLimitExceeded` are QUOTA_EXCEEDED. Refusals are raised, not queued in
`events()`; `events()` carries what the provider observes on its own nodes:

- PREEMPTION_NOTICE: the node's spot request has status `marked-for-termination`,
  `marked-for-stop` or `marked-for-hibernation` (DescribeSpotInstanceRequests), which
  AWS sets when it issues the two-minute interruption notice.
- PREEMPTED: the instance stopped or terminated with StateReason
  `Server.SpotInstanceTermination` (DescribeInstances), or its spot request reports
  one of the `instance-terminated-*` / `instance-stopped-*` interruption codes.
- LAUNCHED / TERMINATED: this provider's own acquisitions and releases.

Status codes: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-request-status.html
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from capacity.catalog import SpotQuote
from capacity.live.bootstrap import RayJoin, ray_join_script
from capacity.live.prices import aws_spot_quotes
from capacity.model import CapacityError, CapacityEvent, EventKind, Market, Node, NodeState, Placement, ProviderError

MANAGED_TAG = "meridian:managed"
PLATFORM_TAG = "meridian:platform"
REGION_TAG = "meridian:region"
# The node's `meridian.io/node` Ray label: EC2 names an instance only once it launched.
NODE_TAG = "meridian:node"

STOCKOUT_CODES = frozenset(
    {"InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity"}
)
QUOTA_CODES = frozenset({"VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "InstanceLimitExceeded"})
NOTICE_STATUS_CODES = frozenset({"marked-for-termination", "marked-for-stop", "marked-for-hibernation"})
INTERRUPTED_STATUS_CODES = frozenset(
    {
        "instance-terminated-by-price",
        "instance-terminated-no-capacity",
        "instance-terminated-capacity-oversubscribed",
        "instance-terminated-launch-group-constraint",
        "instance-stopped-by-price",
        "instance-stopped-no-capacity",
        "instance-stopped-capacity-oversubscribed",
    }
)
INTERRUPTED_STATE_REASONS = frozenset({"Server.SpotInstanceTermination"})

LIVE_STATES = {"pending": NodeState.PENDING, "running": NodeState.RUNNING}
ALL_STATES = ["pending", "running", "shutting-down", "stopping", "stopped", "terminated"]


P = ParamSpec("P")
R = TypeVar("R")


def _sdk_errors_named(method: Callable[P, R]) -> Callable[P, R]:
    """EC2 errors that are not capacity refusals become a ProviderError naming the call."""

    @functools.wraps(method)
    def calling(*args: P.args, **kwargs: P.kwargs) -> R:
        where = f"aws/{args[0].region}"  # type: ignore[attr-defined]
        try:
            return method(*args, **kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "error")
            raise ProviderError(where, error.operation_name, code) from None
        except BotoCoreError as error:  # no credentials, an endpoint that does not answer
            raise ProviderError(where, "EC2", type(error).__name__) from None

    return calling


class AwsProvider:
    """Launches, lists and terminates one region's Meridian nodes on EC2."""

    cloud = "aws"

    def __init__(
        self,
        *,
        region: str,
        platform: str,
        join: RayJoin,
        image_id: str,
        session: boto3.session.Session | None = None,
        endpoint_url: str | None = None,
        subnet_by_zone: Mapping[str, str] | None = None,
        security_group_ids: Iterable[str] = (),
        iam_instance_profile: str | None = None,
        # A node reaches its head over the VPC; a public address only when the spec asks.
        public_ip: bool = False,
        # Placement falls back to another zone or market on a refusal; retrying a
        # stockout here would only delay that. Polls run again on the next tick.
        max_attempts: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.region = region
        self.platform = platform
        self.join = join
        self.image_id = image_id
        self.subnet_by_zone = dict(subnet_by_zone or {})
        self.security_group_ids = list(security_group_ids)
        self.iam_instance_profile = iam_instance_profile
        self.public_ip = public_ip
        self._clock = clock
        self._ec2 = (session or boto3.session.Session()).client(
            "ec2",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(retries={"mode": "standard", "total_max_attempts": max_attempts}),
        )
        self._queued: list[CapacityEvent] = []
        self._noticed: set[str] = set()
        self._preempted: set[str] = set()

    @_sdk_errors_named
    def acquire(self, placement: Placement, count: int = 1) -> list[Node]:
        """Launch up to `count` instances (at least one) in `placement`'s zone and market."""
        if placement.cloud != self.cloud or placement.region != self.region:
            raise ValueError(f"{self.cloud}/{self.region} provider cannot place {placement}")
        # One label for the instances of one call: the capacity loop buys one at a time.
        label = f"meridian-{self.join.region_slug}-{uuid.uuid4().hex[:10]}"[:63]
        script = ray_join_script(
            self.join, cloud=self.cloud, zone=placement.zone, market=placement.market, node_label=label
        )
        tags = [*self._ownership_tags(), {"Key": NODE_TAG, "Value": label}]
        params: dict[str, Any] = {
            "ImageId": self.image_id,
            "InstanceType": placement.instance_type,
            # As many as EC2 can start, at least one (moto launches MinCount, ignoring MaxCount).
            "MinCount": 1,
            "MaxCount": count,
            "Placement": {"AvailabilityZone": placement.zone},
            "UserData": script,
            # IMDSv2 only: the instance metadata answers no request without a session token.
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": kind, "Tags": tags} for kind in ("instance", "volume")],
        }
        if placement.market is Market.SPOT:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        if placement.zone in self.subnet_by_zone:
            params["NetworkInterfaces"] = [
                {
                    "DeviceIndex": 0,
                    "SubnetId": self.subnet_by_zone[placement.zone],
                    "Groups": self.security_group_ids,
                    "AssociatePublicIpAddress": self.public_ip,
                }
            ]
        elif self.security_group_ids:
            params["SecurityGroupIds"] = self.security_group_ids
        if self.iam_instance_profile:
            params["IamInstanceProfile"] = {"Name": self.iam_instance_profile}
        try:
            reply = self._ec2.run_instances(**params)
        except ClientError as error:
            code = error.response["Error"]["Code"]
            kind = refusal_kind(code)
            if kind is None:
                raise
            message = f"{code}: {error.response['Error'].get('Message', '')}"
            raise CapacityError(CapacityEvent(kind, placement, self._clock(), message=message)) from error
        nodes = [self._node(instance) for instance in reply["Instances"]]
        now = self._clock()
        self._queued.extend(CapacityEvent(EventKind.LAUNCHED, node.placement, now, node.id) for node in nodes)
        return nodes

    @_sdk_errors_named
    def spot_quotes(self, instance_types: Iterable[str]) -> list[SpotQuote]:
        """The current spot price of each type in each zone of the region (DescribeSpotPriceHistory)."""
        return aws_spot_quotes(self._ec2, sorted(instance_types))

    @_sdk_errors_named
    def release(self, node_id: str) -> None:
        instance = self._owned_instance(node_id)
        self._ec2.terminate_instances(InstanceIds=[node_id])
        self._queued.append(CapacityEvent(EventKind.TERMINATED, self._placement(instance), self._clock(), node_id))

    @_sdk_errors_named
    def nodes(self) -> list[Node]:
        return [
            self._node(instance)
            for instance in self._describe_owned(list(LIVE_STATES))
            if instance["State"]["Name"] in LIVE_STATES
        ]

    @_sdk_errors_named
    def events(self) -> list[CapacityEvent]:
        now = self._clock()
        instances = self._describe_owned(ALL_STATES)
        observed: list[CapacityEvent] = []
        for instance in instances:
            reason = instance.get("StateReason", {}).get("Code", "")
            if reason in INTERRUPTED_STATE_REASONS and instance["InstanceId"] not in self._preempted:
                self._preempted.add(instance["InstanceId"])
                observed.append(
                    CapacityEvent(
                        EventKind.PREEMPTED,
                        self._placement(instance),
                        now,
                        instance["InstanceId"],
                        instance["StateReason"].get("Message", reason),
                    )
                )
        by_id = {instance["InstanceId"]: instance for instance in instances}
        spot_ids = [
            instance_id
            for instance_id, instance in by_id.items()
            if instance.get("InstanceLifecycle") == "spot" and instance_id not in self._preempted
        ]
        for request in self._spot_requests(spot_ids):
            instance_id = request.get("InstanceId", "")
            code = request.get("Status", {}).get("Code", "")
            message = f"{code}: {request.get('Status', {}).get('Message', '')}".rstrip(": ")
            if code in NOTICE_STATUS_CODES and instance_id not in self._noticed:
                self._noticed.add(instance_id)
                kind = EventKind.PREEMPTION_NOTICE
            elif code in INTERRUPTED_STATUS_CODES and instance_id not in self._preempted:
                self._preempted.add(instance_id)
                kind = EventKind.PREEMPTED
            else:
                continue
            observed.append(CapacityEvent(kind, self._placement(by_id[instance_id]), now, instance_id, message))
        events, self._queued = self._queued + observed, []
        return events

    def _ownership_tags(self) -> list[dict[str, str]]:
        return [
            {"Key": MANAGED_TAG, "Value": "true"},
            {"Key": PLATFORM_TAG, "Value": self.platform},
            {"Key": REGION_TAG, "Value": self.join.region_slug},
            {"Key": "Name", "Value": f"meridian-{self.join.region_slug}"},
        ]

    def _owns(self, instance: Mapping[str, Any]) -> bool:
        tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
        return tags.get(MANAGED_TAG) == "true" and tags.get(PLATFORM_TAG) == self.platform

    def _describe_owned(self, states: list[str]) -> list[dict[str, Any]]:
        filters = [
            {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]},
            {"Name": f"tag:{PLATFORM_TAG}", "Values": [self.platform]},
            {"Name": "instance-state-name", "Values": states},
        ]
        pages = self._ec2.get_paginator("describe_instances").paginate(Filters=filters)
        return [
            instance
            for page in pages
            for reservation in page["Reservations"]
            for instance in reservation["Instances"]
            if self._owns(instance)
        ]

    def _owned_instance(self, node_id: str) -> dict[str, Any]:
        try:
            reply = self._ec2.describe_instances(InstanceIds=[node_id])
        except ClientError as error:
            if error.response["Error"]["Code"].startswith("InvalidInstanceID"):
                raise KeyError(node_id) from error
            raise
        instances = [instance for reservation in reply["Reservations"] for instance in reservation["Instances"]]
        if not instances or not self._owns(instances[0]):
            raise KeyError(f"{node_id} is not a Meridian node of platform {self.platform!r}")
        return instances[0]

    def _spot_requests(self, instance_ids: list[str]) -> list[dict[str, Any]]:
        if not instance_ids:
            return []
        reply = self._ec2.describe_spot_instance_requests(Filters=[{"Name": "instance-id", "Values": instance_ids}])
        return [request for request in reply["SpotInstanceRequests"] if request.get("InstanceId") in instance_ids]

    def _placement(self, instance: Mapping[str, Any]) -> Placement:
        market = Market.SPOT if instance.get("InstanceLifecycle") == "spot" else Market.ON_DEMAND
        return Placement(
            self.cloud, self.region, instance["Placement"]["AvailabilityZone"], instance["InstanceType"], market
        )

    def _node(self, instance: Mapping[str, Any]) -> Node:
        state = LIVE_STATES.get(instance["State"]["Name"], NodeState.TERMINATED)
        if state is NodeState.RUNNING and instance["InstanceId"] in self._noticed:
            state = NodeState.DRAINING
        label = next((tag["Value"] for tag in instance.get("Tags", []) if tag["Key"] == NODE_TAG), None)
        return Node(instance["InstanceId"], self._placement(instance), state, instance["LaunchTime"].timestamp(), label)


def refusal_kind(code: str) -> EventKind | None:
    """The typed reason behind an EC2 error code, or None if it is not a capacity refusal."""
    if code in STOCKOUT_CODES:
        return EventKind.STOCKOUT
    if code in QUOTA_CODES:
        return EventKind.QUOTA_EXCEEDED
    return None
