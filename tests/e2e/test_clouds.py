"""End to end across two emulated clouds, each region its own Ray cluster.

`aws/us-east-1` buys EC2 through boto3 from moto behind the fault proxy, and
`gcp/europe-west4` buys Compute Engine through google-cloud-compute from the local
Compute endpoint (tests/emulated_clouds/). Each region starts with no node: its capacity
loop buys one through the SDK, and the instance runner runs that instance's own boot
script, which joins the region's cluster as a real Ray node where vLLM serves the
packaged model.

The tests run in file order: routing from both sides of the Atlantic, a spot
interruption while spot is stocked out (whose first replacement never joins), a quota
refusal that becomes a floor in the other region, and a `down` that leaves no instance
and no process.
"""

from __future__ import annotations

import csv
import json
import math
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import openai
import pytest

from capacity.live.aws import MANAGED_TAG
from meridian import launcher
from meridian_core.spec import PlatformSpec, load_spec
from meridian_host import processes
from meridian_host.platform_state import PlatformState
from meridian_host.ray_nodes import REGION_LABEL
from meridian_host.region_tokens import dashboard_headers
from tests.emulated_clouds.aws import (
    AWS_REGION,
    FaultProxy,
    ec2_error,
    interrupt,
    moto_behind_proxy,
    notice_interruption,
    spot_launch,
)
from tests.emulated_clouds.gcp import FakeComputeApi, quota_exceeded
from tests.emulated_clouds.instance_runner import InstanceRunner, marked_processes

from .conftest import running_platform

TEMPLATE = Path(__file__).with_name("e2e-clouds.yaml")
CATALOG = Path(__file__).with_name("emulated-catalog.csv")
BIN = Path(sys.executable).parent
US, EU = "aws/us-east-1", "gcp/europe-west4"
PARIS = "48.85,2.35"
# A new node's Ray join and a replica's start there: about 2 min on a quiet machine here;
# a CI run whose two cores also ran a second full suite missed 600 s, and replacements
# started while europe-west4 served the whole load took 979 s and 1,309 s (vLLM compiled
# the model again on every start then: deployments/model_app.py:engine_env).
REPLICA_START_S = 1200
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]
GCP_PROJECT, GCP_ZONES = "meridian-e2e", ["europe-west4-a", "europe-west4-b"]
# Emulated instances start their Ray nodes on ports above the platform's own blocks.
RUNNER_PORTS_FROM = 30000


@dataclass
class Clouds:
    aws: FaultProxy
    ec2: object  # a boto3 EC2 client on the proxy
    gcp: FakeComputeApi
    runner: InstanceRunner
    spec_path: Path
    subnets: dict[str, str]  # zone -> subnet id
    security_group: str


def catalog_vcpus() -> dict[str, int]:
    with CATALOG.open(newline="") as handle:
        return {row["instance_type"]: int(row["vcpus"]) for row in csv.DictReader(handle)}


def catalog_price(instance_type: str, zone: str, market: str) -> float:
    column = "spot_price_per_hour_usd" if market == "spot" else "price_per_hour_usd"
    with CATALOG.open(newline="") as handle:
        return next(
            float(r[column]) for r in csv.DictReader(handle) if (r["instance_type"], r["zone"]) == (instance_type, zone)
        )


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clouds]:
    work = tmp_path_factory.mktemp("clouds")
    with moto_behind_proxy() as proxy:
        ec2 = boto3.client("ec2", region_name=AWS_REGION, endpoint_url=proxy.url)
        # What a user sets up by hand before `meridian up`: a VPC, a subnet per zone, a security group.
        vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
        subnets = {
            zone: ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{k}.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
            for k, zone in enumerate(["us-east-1a", "us-east-1b"])
        }
        group = ec2.create_security_group(GroupName="meridian-nodes", Description="cluster only", VpcId=vpc)["GroupId"]
        gcp = FakeComputeApi(project=GCP_PROJECT, zones_by_region={"europe-west4": GCP_ZONES}).start()
        spec_path = work / "e2e-clouds.yaml"
        spec_path.write_text(
            string.Template(TEMPLATE.read_text()).substitute(
                aws_endpoint=proxy.url,
                subnet_a=subnets["us-east-1a"],
                subnet_b=subnets["us-east-1b"],
                security_group=group,
                gcp_endpoint=gcp.endpoint,
                catalog=str(CATALOG),
            )
        )
        runner = InstanceRunner(
            ec2=ec2,
            gcp=gcp,
            logs_dir=work / "instances",
            ports_from=RUNNER_PORTS_FROM,
            vcpus_by_instance_type=catalog_vcpus(),
        )
        with runner:
            try:
                yield Clouds(proxy, ec2, gcp, runner, spec_path, subnets, group)
            finally:
                gcp.stop()


@pytest.fixture(scope="module")
def spec(clouds: Clouds) -> PlatformSpec:
    return load_spec(clouds.spec_path)


@pytest.fixture(scope="module")
def platform(clouds: Clouds, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformState]:
    with running_platform(clouds.spec_path, tmp_path_factory.mktemp("state-clouds")) as state:
        yield state


@pytest.fixture
def client(platform: PlatformState) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform.router_url}/v1", api_key="unused", max_retries=0, timeout=120)


def aws_instances(clouds: Clouds, states: tuple[str, ...] = ("pending", "running")) -> list[dict]:
    filters = [
        {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]},
        {"Name": "instance-state-name", "Values": list(states)},
    ]
    reply = clouds.ec2.describe_instances(Filters=filters)  # type: ignore[attr-defined]
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def gcp_running(clouds: Clouds) -> list[dict]:
    return [i for i in clouds.gcp.instances_snapshot().values() if i["status"] == "RUNNING"]


def zone_of(vm: dict) -> str:
    return vm["zone"].rsplit("/", 1)[-1]


def eventually(check: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(1.0)


def cli_json(platform: PlatformState, *args: str) -> dict:
    result = subprocess.run(
        [str(BIN / "meridian"), *args, "--json"], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(result.stdout)


def ask(client: openai.OpenAI, model: str, where: str | None = None) -> tuple[str, str]:
    """One short greedy chat answer: (the region that answered, its text)."""
    headers = {"X-Client-Location": where} if where else None
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=QUESTION, temperature=0, max_tokens=16, extra_headers=headers
    )
    return raw.headers["x-meridian-region"], raw.parse().choices[0].message.content or ""


def test_up_buys_one_node_per_region_through_the_sdks_and_each_side_is_served_at_home(clouds, spec, platform, client):
    (instance,) = aws_instances(clouds)
    assert instance["InstanceType"] == "m7i.2xlarge" and instance.get("InstanceLifecycle") == "spot"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2 only
    assert instance["SubnetId"] == clouds.subnets[instance["Placement"]["AvailabilityZone"]]
    (launch,) = [p for op, p in zip(clouds.aws.seen, clouds.aws.params, strict=False) if op == "RunInstances"]
    assert launch["NetworkInterface.1.SecurityGroupId.1"] == [clouds.security_group]  # the cluster's group only
    assert launch["NetworkInterface.1.AssociatePublicIpAddress"] == ["false"]
    assert "PublicIpAddress" not in instance
    (vm,) = gcp_running(clouds)
    assert vm["machineType"].endswith("/n2-standard-8") and vm["scheduling"]["provisioningModel"] == "SPOT"
    assert all("accessConfigs" not in nic for nic in vm["networkInterfaces"])  # no external IP
    assert clouds.runner.booted() == {instance["InstanceId"], f"{zone_of(vm)}/{vm['name']}"}
    for cluster in platform.clusters.values():  # each cluster takes Ray's token authentication
        nodes = f"{cluster.dashboard_url}/api/v0/nodes"
        assert httpx.get(nodes, timeout=10).status_code == 401
        alive = httpx.get(nodes, headers=dashboard_headers(platform, cluster), timeout=10).json()["data"]["result"]
        labels = [n["labels"] for n in alive["result"] if n["state"] == "ALIVE" and REGION_LABEL in n["labels"]]
        assert [label[REGION_LABEL] for label in labels] == [cluster.slug]  # the booted instance joined with it

    model = spec.models[0].id
    region, text = ask(client, model)
    assert region == US and "Paris" in text  # the default location is Ashburn
    region, text = ask(client, model, where=PARIS)
    assert region == EU and "Paris" in text


@dataclass
class SteadyLoad:
    """US clients, `clients` of them, each sending requests one after another at most
    `per_s` a second, until stopped or for `lasts_s` at most: set it to the longest the
    test may wait on the load, or the load ends before what the test waits for.

    A request every two seconds per client at most: with a request every half second,
    europe-west4's engine serving the whole load left the booting replacement node's
    processes so little of the two cores that its Ray dashboard agent missed the 15 s its
    raylet gives it to start (Ray 2.60 has no setting for it), five nodes in a row, and the
    replica of the sixth took 7 minutes to start.

    A request in flight on the interrupted node is not failed over: Serve holds it for
    the replica that replaces the lost one (a couple of minutes here), so each client
    waits up to `patience_s` for an answer, and a second client shows where the others go.
    """

    client: openai.OpenAI
    model: str
    lasts_s: float
    clients: int = 2
    per_s: float = 0.5
    patience_s: float = 300.0
    answered: list[tuple[float, str]] = field(default_factory=list)  # (when, region)
    failed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        patient = self.client.with_options(timeout=self.patience_s)
        self._threads = [threading.Thread(target=self._run, args=(patient,), daemon=True) for _ in range(self.clients)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.patience_s + 10)

    def _run(self, client: openai.OpenAI) -> None:
        for _ in range(math.ceil(self.lasts_s * self.per_s)):
            if self._stop.wait(1 / self.per_s):
                return
            try:
                region, _ = ask(client, self.model)
                self.answered.append((time.time(), region))
            except openai.APIError as error:
                self.failed.append(f"{type(error).__name__}: {str(error)[:200]}")

    def answered_from(self, region: str, since: float) -> int:
        return sum(1 for at, where in self.answered if at >= since and where == region)


def test_a_spot_interruption_with_spot_stocked_out_fails_no_request_and_is_replaced_on_demand(
    clouds, spec, platform, client
):
    """...and the first on-demand replacement's boot fails: it never joins the cluster, so
    the capacity loop releases it after `join_timeout_s` and buys another."""
    (spot,) = aws_instances(clouds)
    with SteadyLoad(client, spec.models[0].id, lasts_s=3 * 120 + REPLICA_START_S) as load:
        eventually(lambda: load.answered_from(US, 0) >= 3, 120, "US requests answered from us-east-1")
        clouds.aws.answer(
            "RunInstances",
            ec2_error("InsufficientInstanceCapacity", "There is no Spot capacity available.", 500),
            when=spot_launch,
        )
        clouds.runner.fail_next_boot(lambda instance: instance.cloud == "aws")
        notice_interruption(clouds.aws, spot["InstanceId"])
        # The two-minute notice: the loop tries spot (stocked out everywhere), then buys on demand.
        unjoined = eventually(
            lambda: [i for i in aws_instances(clouds, ("running",)) if i.get("InstanceLifecycle") != "spot"],
            120,
            "an on-demand replacement",
        )[0]
        interrupted_at = time.time()
        interrupt(spot["InstanceId"])
        eventually(lambda: load.answered_from(EU, interrupted_at) >= 1, 120, "US requests moved to europe-west4")
        eventually(lambda: load.answered_from(US, interrupted_at) >= 3, REPLICA_START_S, "us-east-1 serving again")
    assert load.failed == []
    (replacement,) = aws_instances(clouds)
    assert replacement["InstanceId"] != unjoined["InstanceId"] and replacement.get("InstanceLifecycle") != "spot"
    assert replacement["InstanceType"] == "m7i.2xlarge"

    report = cli_json(platform, "capacity", "report", str(clouds.spec_path))
    rows = {(r["cloud"], r["region"]): r for r in report["rows"]}
    aws, gcp = rows["aws", "us-east-1"], rows["gcp", "europe-west4"]
    assert aws["nodes"] == {"on_demand": 1, "spot": 0} and gcp["nodes"] == {"on_demand": 0, "spot": 1}
    zone = replacement["Placement"]["AvailabilityZone"]
    assert aws["usd_per_hour"] == pytest.approx(catalog_price("m7i.2xlarge", zone, "on-demand"))
    (vm,) = gcp_running(clouds)
    assert gcp["usd_per_hour"] == pytest.approx(catalog_price("n2-standard-8", zone_of(vm), "spot"))
    assert aws["stockouts_1h"] >= 1 and aws["preemptions_1h"] >= 1 and aws["failed_joins_1h"] >= 1


def test_a_quota_refusal_becomes_a_floor_in_the_other_region(clouds, spec, platform, client):
    clouds.gcp.refuse_inserts(quota_exceeded("CPUS", "europe-west4"))
    (vm,) = gcp_running(clouds)
    clouds.gcp.preempt(zone_of(vm), vm["name"])

    def floored() -> dict | None:
        regions = {r["name"]: r for r in cli_json(platform, "status", str(clouds.spec_path))["regions"]}
        us = regions[US]
        floor, scaling = us["floor"], us["autoscaling"]
        if not (floor and scaling):
            return None
        # Its policy's own target (which the held requests of the interruption before may
        # have raised above 1) and europe-west4's one replica it could not place.
        if floor["replicas"] == scaling["own_target"] + 1 and us["ready_replicas"] >= floor["replicas"]:
            return regions
        return None

    regions = eventually(
        floored, REPLICA_START_S, "a floor in us-east-1 of its own target plus europe-west4's replica, all ready"
    )
    assert EU.split("/")[1] in regions[US]["floor"]["reason"] or EU in regions[US]["floor"]["reason"]
    assert regions[EU]["capacity"]["unplaced_replicas"] == 1
    assert "quota" in regions[EU]["capacity"]["reason"].lower()
    region, text = ask(client, spec.models[0].id, where=PARIS)
    assert region == US and "Paris" in text  # Paris is served from the floor's replicas


def test_down_leaves_no_instance_and_no_process(clouds, spec, platform):
    assert launcher.down(spec.name).problems == []  # every region's cloud released its instances
    assert aws_instances(clouds) == [] and gcp_running(clouds) == []
    eventually(lambda: not clouds.runner.booted(), 30, "the runner to stop every emulated machine")
    assert marked_processes() == []
    assert processes.marked_processes(platform.platform_id) == []
    assert PlatformState.load(spec.name) is None
