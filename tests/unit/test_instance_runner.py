"""The instance runner boots the emulated clouds' Meridian instances with their own boot
scripts, and kills what those scripts started when the instances go away.

The boot scripts here start a daemon that outlives the script (`setsid sleep 300 &`), as
`ray start` does, so killing an instance must find its processes by their marker.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
import psutil
import pytest
from botocore.config import Config
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from capacity.live.aws import MANAGED_TAG, PLATFORM_TAG
from capacity.live.gcp import MANAGED_LABEL, PLATFORM_LABEL
from meridian_core.spec import PORTS_PER_NODE
from meridian_host.ray_nodes import node_port_flags
from tests.emulated_clouds.aws import AWS_REGION, FaultProxy, interrupt, moto_behind_proxy
from tests.emulated_clouds.gcp import FakeComputeApi
from tests.emulated_clouds.instance_runner import InstanceRunner, marked_processes, processes_whose_environment

IMAGE = "ami-12c6146b"  # one of moto's default AMIs
PROJECT = "meridian-test"
GCP_REGION = "us-central1"
ZONE = "us-central1-a"
PORTS_FROM = 30000
VCPUS = {"g5.xlarge": 4, "p4d.24xlarge": 96, "g2-standard-8": 8}
BOOT_SCRIPT = (
    '#!/bin/bash\nexec >>"$MERIDIAN_BOOT_LOG" 2>&1\necho "args: $MERIDIAN_RAY_START_ARGS"\nsetsid sleep 300 &\n'
)
MERIDIAN_TAGS = [{"Key": MANAGED_TAG, "Value": "true"}, {"Key": PLATFORM_TAG, "Value": "test"}]
MERIDIAN_LABELS = {MANAGED_LABEL: "true", PLATFORM_LABEL: "test"}

T = TypeVar("T")


def eventually(check: Callable[[], T], what: str, timeout_s: float = 30.0) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    pytest.fail(f"not within {timeout_s} s: {what}")


@pytest.fixture(scope="module")
def proxy() -> Iterator[FaultProxy]:
    with moto_behind_proxy() as proxy:
        yield proxy


@pytest.fixture
def ec2(proxy: FaultProxy) -> Iterator[Any]:
    client = boto3.client("ec2", region_name=AWS_REGION, endpoint_url=proxy.url)
    yield client
    live = client.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
    ids = [instance["InstanceId"] for reservation in live["Reservations"] for instance in reservation["Instances"]]
    if ids:
        client.terminate_instances(InstanceIds=ids)


@pytest.fixture
def compute() -> Iterator[FakeComputeApi]:
    api = FakeComputeApi(PROJECT, {GCP_REGION: [ZONE]}, polls_until_done=0).start()
    yield api
    api.stop()


@pytest.fixture
def start_runner(tmp_path: Path) -> Iterator[Callable[..., InstanceRunner]]:
    """Starts runners on `tmp_path`; afterwards stops them and kills whatever their boot scripts left."""
    runners: list[InstanceRunner] = []

    def start(**clouds: Any) -> InstanceRunner:
        runner = InstanceRunner(
            logs_dir=tmp_path, ports_from=PORTS_FROM, vcpus_by_instance_type=VCPUS, poll_interval_s=0.1, **clouds
        )
        runners.append(runner.start())
        return runner

    yield start
    for runner in runners:
        runner.stop()
    for process in processes_whose_environment(lambda env: env.get("MERIDIAN_BOOT_LOG", "").startswith(f"{tmp_path}/")):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def moto_ec2(proxy: FaultProxy) -> Any:
    """The runner's client: on moto itself, with timeouts that bound each poll."""
    config = Config(connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 1})
    return boto3.client("ec2", region_name=AWS_REGION, endpoint_url=proxy.upstream_url, config=config)


def launch(ec2: Any, instance_type: str = "g5.xlarge", tags: list[dict[str, str]] = MERIDIAN_TAGS, **extra: Any) -> str:
    reply = ec2.run_instances(
        ImageId=IMAGE,
        InstanceType=instance_type,
        MinCount=1,
        MaxCount=1,
        UserData=BOOT_SCRIPT,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}] if tags else [],
        **extra,
    )
    return reply["Instances"][0]["InstanceId"]


def insert(compute: FakeComputeApi, name: str, labels: dict[str, str] = MERIDIAN_LABELS) -> str:
    client = compute_v1.InstancesClient(
        credentials=AnonymousCredentials(), client_options={"api_endpoint": compute.endpoint}
    )
    operation = client.insert_unary(
        project=PROJECT,
        zone=ZONE,
        instance_resource=compute_v1.Instance(
            name=name,
            machine_type=f"zones/{ZONE}/machineTypes/g2-standard-8",
            labels=labels,
            scheduling=compute_v1.Scheduling(provisioning_model="SPOT", instance_termination_action="DELETE"),
            metadata=compute_v1.Metadata(items=[compute_v1.Items(key="startup-script", value=BOOT_SCRIPT)]),
        ),
    )
    compute_v1.ZoneOperationsClient(
        credentials=AnonymousCredentials(), client_options={"api_endpoint": compute.endpoint}
    ).wait(project=PROJECT, zone=ZONE, operation=operation.name)
    return f"{ZONE}/{name}"


def dead(process: psutil.Process) -> bool:
    """Gone, or a zombie its new parent (init, once the script exits) has not reaped yet."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def only_daemons(marker: str) -> list[psutil.Process]:
    """The processes carrying `marker` once every one of them is the boot script's `sleep` daemon."""
    processes = marked_processes(marker)
    try:
        return processes if processes and all(process.name() == "sleep" for process in processes) else []
    except psutil.NoSuchProcess:
        return []


def boot_args(logs_dir: Path, name: str) -> str:
    log = logs_dir / f"boot-{name}.log"
    return eventually(lambda: log.exists() and log.read_text().partition("args: ")[2].strip(), f"{log} shows args")


def start_args(block_index: int, vcpus: int, address: str) -> str:
    flags = node_port_flags(PORTS_FROM + block_index * PORTS_PER_NODE, address)
    return " ".join([*flags, "--num-cpus", str(vcpus)])


def test_an_aws_instance_boots_its_user_data_and_dies_with_the_instance(
    ec2: Any, proxy: FaultProxy, start_runner: Callable[..., InstanceRunner], tmp_path: Path
) -> None:
    runner = start_runner(ec2=moto_ec2(proxy))
    instance_id = launch(ec2)

    # The boot script and the subshell that becomes the daemon are marked too until they exit or exec.
    (daemon,) = eventually(lambda: only_daemons(f"aws:{instance_id}"), "the instance's daemon alone runs")
    assert runner.booted() == {instance_id}
    assert boot_args(tmp_path, f"aws-{instance_id}") == start_args(block_index=0, vcpus=4, address="127.0.2.1")

    ec2.terminate_instances(InstanceIds=[instance_id])

    eventually(lambda: not marked_processes(f"aws:{instance_id}"), "the instance's processes are gone")
    assert dead(daemon)
    assert runner.booted() == set()
    assert runner.poll_errors == 0


def test_a_spot_interruption_kills_the_machine(
    ec2: Any, proxy: FaultProxy, start_runner: Callable[..., InstanceRunner], tmp_path: Path
) -> None:
    runner = start_runner(ec2=moto_ec2(proxy))
    instance_id = launch(ec2, "p4d.24xlarge", InstanceMarketOptions={"MarketType": "spot"})
    eventually(lambda: marked_processes(f"aws:{instance_id}"), "the instance's daemon runs")
    assert boot_args(tmp_path, f"aws-{instance_id}").endswith("--num-cpus 96")

    interrupt(instance_id)

    eventually(lambda: not marked_processes(f"aws:{instance_id}"), "the instance's processes are gone")
    assert runner.booted() == set()


def test_instances_without_meridians_tag_are_never_booted(
    ec2: Any, proxy: FaultProxy, start_runner: Callable[..., InstanceRunner]
) -> None:
    untagged = launch(ec2, tags=[])
    foreign = launch(ec2, tags=[{"Key": MANAGED_TAG, "Value": "false"}])
    runner = start_runner(ec2=moto_ec2(proxy))
    tagged = launch(ec2)

    eventually(lambda: tagged in runner.booted(), "the tagged instance boots")
    # The runner lists all of a cloud's running instances at once: the others were in the same poll.
    assert runner.booted() == {tagged}
    assert marked_processes(f"aws:{untagged}") == marked_processes(f"aws:{foreign}") == []


def test_a_port_block_is_reused_once_its_instance_is_gone_but_never_an_address(
    ec2: Any, proxy: FaultProxy, start_runner: Callable[..., InstanceRunner], tmp_path: Path
) -> None:
    runner = start_runner(ec2=moto_ec2(proxy))
    first = launch(ec2)
    eventually(lambda: first in runner.booted(), "the first instance boots")
    second = launch(ec2)
    eventually(lambda: second in runner.booted(), "the second instance boots")
    assert boot_args(tmp_path, f"aws-{second}") == start_args(block_index=1, vcpus=4, address="127.0.2.2")

    ec2.terminate_instances(InstanceIds=[first])
    eventually(lambda: first not in runner.booted(), "the first instance is killed")
    third = launch(ec2)

    eventually(lambda: third in runner.booted(), "the third instance boots")
    # Its first's ports, but a machine's address of its own, as a new VM's.
    assert boot_args(tmp_path, f"aws-{third}") == start_args(block_index=0, vcpus=4, address="127.0.2.3")


def test_an_instance_type_of_unknown_size_is_a_counted_error_not_a_dead_runner(
    ec2: Any, proxy: FaultProxy, start_runner: Callable[..., InstanceRunner]
) -> None:
    runner = start_runner(ec2=moto_ec2(proxy))
    unknown = launch(ec2, "t3.micro")
    eventually(lambda: runner.poll_errors > 0, "the boot fails")

    known = launch(ec2)

    eventually(lambda: known in runner.booted(), "the next instance still boots")
    assert unknown not in runner.booted()


def test_a_gcp_instance_boots_its_startup_script_and_dies_when_preempted(
    compute: FakeComputeApi, start_runner: Callable[..., InstanceRunner], tmp_path: Path
) -> None:
    runner = start_runner(gcp=compute)
    node_id = insert(compute, "meridian-vm-1")
    unlabeled = insert(compute, "hand-made", labels={})

    eventually(lambda: marked_processes(f"gcp:{node_id}"), "the instance's daemon runs")
    assert runner.booted() == {node_id}
    assert boot_args(tmp_path, f"gcp-{ZONE}-meridian-vm-1") == start_args(block_index=0, vcpus=8, address="127.0.2.1")
    assert marked_processes(f"gcp:{unlabeled}") == []

    compute.preempt(ZONE, "meridian-vm-1")

    eventually(lambda: not marked_processes(f"gcp:{node_id}"), "the instance's processes are gone")
    assert runner.booted() == set()


def test_stop_leaves_no_marked_process(
    ec2: Any, proxy: FaultProxy, compute: FakeComputeApi, start_runner: Callable[..., InstanceRunner]
) -> None:
    runner = start_runner(ec2=moto_ec2(proxy), gcp=compute)
    instance_id = launch(ec2)
    node_id = insert(compute, "meridian-vm-2")
    eventually(lambda: runner.booted() == {instance_id, node_id}, "both instances boot")
    daemons = marked_processes(f"aws:{instance_id}") + marked_processes(f"gcp:{node_id}")

    runner.stop()

    assert runner.booted() == set()
    assert marked_processes(f"aws:{instance_id}") == marked_processes(f"gcp:{node_id}") == []
    assert daemons and all(dead(daemon) for daemon in daemons)
