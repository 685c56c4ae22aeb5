"""Each region's provider and catalog come from its `capacity:` settings, and every
cluster/provider setting is checked at load with the field named."""

from __future__ import annotations

import os

import pytest
import yaml

from capacity.live.aws import AwsProvider
from capacity.live.gcp import GcpProvider
from capacity.live.local import LocalProvider
from capacity.live.providers import provider_for
from capacity.model import EventKind
from meridian_core.spec import SpecError, load_spec, parse_spec
from meridian_host.platform_state import ClusterState, LocalNode, LocalNodes, PlatformState

AWS = {
    "provider": "aws",
    "region": "us-east-1",
    "subnets": {"us-east-1a": "subnet-0a", "us-east-1b": "subnet-0b"},
    "security_group_ids": ["sg-0c"],
    "image_id": "ami-0123456789abcdef0",
    "instance_types": {"L4": "g6.xlarge"},
    "endpoint_url": "http://127.0.0.1:5999",
}
GCP = {
    "provider": "gcp",
    "project": "meridian-test",
    "zones": ["europe-west4-a", "europe-west4-b"],
    "machine_types": {"L4": "g2-standard-4"},
    "image": "projects/meridian-test/global/images/family/meridian",
    "api_endpoint": "http://127.0.0.1:5998",
}


def spec_with(*regions: dict):
    return parse_spec({"models": [{"id": "m"}], "regions": list(regions)})


def region(name: str, capacity: dict | None = None, **more: object) -> dict:
    data = {"name": name, "location": {"lat": 40.0, "lon": -75.0}, "accelerator": "L4", **more}
    if capacity is not None:
        data["capacity"] = capacity
    return data


def state_for(spec) -> PlatformState:
    state = PlatformState(name=spec.name, spec_path="spec.yaml", platform_id="p", router_url="http://127.0.0.1:1")
    for r in spec.regions:
        state.clusters[r.name] = ClusterState(slug=r.slug, gcs_address="127.0.0.1:6380", dashboard_url="http://x")
    return state


def test_each_region_gets_the_provider_and_catalog_its_settings_name():
    spec = spec_with(region("aws/us-east-1", AWS), region("gcp/europe-west4", GCP), region("local/lab", None))
    state = state_for(spec)
    aws, aws_catalog = provider_for(spec, spec.regions[0], state)
    gcp, gcp_catalog = provider_for(spec, spec.regions[1], state)
    local, _ = provider_for(spec, spec.regions[2], state)
    assert isinstance(aws, AwsProvider) and aws.region == "us-east-1" and aws.subnet_by_zone == AWS["subnets"]
    assert isinstance(gcp, GcpProvider) and gcp.region == "europe-west4" and gcp.project == "meridian-test"
    assert isinstance(local, LocalProvider)
    # The extract prices g6.xlarge in one AZ ID; launches name zones, so it stands in for each subnet's zone.
    assert {(o.cloud, o.region, o.zone, o.instance_type) for o in aws_catalog.offerings()} == {
        ("aws", "us-east-1", "us-east-1a", "g6.xlarge"),
        ("aws", "us-east-1", "us-east-1b", "g6.xlarge"),
    }
    assert {o.instance_type for o in gcp_catalog.offerings()} == {"g2-standard-4"}
    assert {o.zone for o in gcp_catalog.offerings()} <= set(GCP["zones"]) and len(gcp_catalog) >= 1
    # New nodes join the region's own cluster, in the spec's Serve mode.
    assert aws.join.head_address == "127.0.0.1:6380" and aws.join.region_slug == "aws-us-east-1"
    # Idle Python workers are let go on every node (meridian_host/node_env.py).
    # Ray's usage stats are off by default, on every node.
    lean = {"RAY_num_workers_soft_limit": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    high_throughput = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_INGRESS_REQUEST_ROUTER_FORWARD_BODY": "1",
    }
    assert aws.join.env == gcp.join.env == high_throughput | lean  # the default mode
    default_mode = parse_spec(
        {"models": [{"id": "m"}], "regions": [region("aws/us-east-1", AWS)], "ray": {"high_throughput": False}}
    )
    assert provider_for(default_mode, default_mode.regions[0], state_for(default_mode))[0].join.env == lean


CPU_CATALOG = """cloud,instance_type,accelerator,accelerator_count,vcpus,memory_gib,region,zone,\
price_per_hour_usd,spot_price_per_hour_usd
aws,m7i.xlarge,cpu,1,4,16,us-east-1,us-east-1a,0.2016,0.0903
aws,m7i.xlarge,cpu,1,4,16,us-east-1,us-east-1b,0.2016,0.0951
aws,m7i.xlarge,cpu,1,4,16,us-east-1,us-east-1c,0.2016,0.0877
"""


def test_the_specs_catalog_files_price_types_the_extract_lacks_in_the_regions_own_zones(tmp_path):
    (tmp_path / "cpu.csv").write_text(CPU_CATALOG)
    aws = {**AWS, "instance_types": {"cpu": "m7i.xlarge"}}
    data = {"models": [{"id": "m"}], "regions": [region("aws/us-east-1", aws, accelerator="cpu")]}
    data["capacity"] = {"catalog_files": ["cpu.csv"]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    spec = load_spec(tmp_path / "spec.yaml")

    _, catalog = provider_for(spec, spec.regions[0], state_for(spec))

    # Its own zone prices, and none for a zone the region has no subnet in.
    assert {(o.zone, o.spot.usd_per_h) for o in catalog.offerings()} == {("us-east-1a", 0.0903), ("us-east-1b", 0.0951)}
    assert {o.accelerator.name for o in catalog.offerings()} == {"cpu"}


def test_a_catalog_file_that_is_not_there_fails_at_load_named(tmp_path):
    data = {"models": [{"id": "m"}], "regions": [region("local/lab")], "capacity": {"catalog_files": ["cpu.csv"]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"capacity.catalog_files.0: no file at cpu.csv"):
        load_spec(tmp_path / "spec.yaml")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (region("gcp/us-east-1", AWS), "capacity.provider"),
        (region("aws/us-west-2", AWS), "capacity: aws/us-west-2 is region us-west-2"),
        (region("aws/us-east-1", {**AWS, "subnets": {"us-west-2a": "subnet-0a"}}), "subnets"),
        (region("aws/us-east-1", {**AWS, "image_id": "ubuntu"}), "image_id"),
        (region("aws/us-east-1", AWS, accelerator="H100"), "capacity.instance_types"),
        (region("gcp/europe-west4", {**GCP, "zones": ["europe-west4-a", "us-central1-a"]}), "zones"),
        (region("gcp/europe-west4", {**GCP, "machine_types": {}}), "machine_types"),
        (region("aws/us-east-1", {**AWS, "provider": "azure"}), "capacity"),
        (region("local/lab", None, cluster={"managed": False, "address": "10.0.0.1:6379"}), "address"),
        (region("local/lab", None, cluster={"managed": True, "address": "10.0.0.1:6379"}), "address"),
        (
            region(
                "local/lab", None, cluster={"managed": False, "address": "10.0.0.1:6379", "dashboard_url": "http://d"}
            ),
            "endpoint",
        ),
    ],
)
def test_a_bad_cluster_or_provider_setting_fails_at_load_naming_the_field(data, words):
    with pytest.raises(SpecError) as error:
        spec_with(data)
    assert words in str(error.value)


def test_down_releases_the_instances_a_cloud_region_owns_and_no_other(tmp_path, monkeypatch):
    """`meridian down`'s cloud step, against moto through boto3: the region's provider
    finds its instances by their ownership tags and terminates them; an instance
    launched outside Meridian in the same account is left running."""
    import boto3

    from capacity.model import Market, Placement
    from meridian.launcher import release_cloud_nodes
    from tests.emulated_clouds.aws import moto_behind_proxy

    monkeypatch.setenv("MERIDIAN_STATE_DIR", str(tmp_path))
    with moto_behind_proxy() as proxy:
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=proxy.url)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = {
            zone: ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]["SubnetId"]
            for zone, cidr in (("us-east-1a", "10.0.1.0/24"), ("us-east-1b", "10.0.2.0/24"))
        }
        group = ec2.create_security_group(GroupName="meridian", Description="cluster", VpcId=vpc)["GroupId"]
        iam = boto3.client("iam", region_name="us-east-1", endpoint_url=proxy.url)
        iam.create_instance_profile(InstanceProfileName="meridian-node")
        aws = {**AWS, "image_id": "ami-12c6146b", "endpoint_url": proxy.url, "subnets": subnets}
        aws |= {"security_group_ids": [group], "iam_instance_profile": "meridian-node"}
        spec = spec_with(region("aws/us-east-1", aws))
        state = state_for(spec)
        provider, _ = provider_for(spec, spec.regions[0], state)
        for zone in subnets:
            provider.acquire(Placement("aws", "us-east-1", zone, "g6.xlarge", Market.ON_DEMAND))
        (foreign,) = ec2.run_instances(ImageId="ami-12c6146b", InstanceType="t3.micro", MinCount=1, MaxCount=1)[
            "Instances"
        ]
        assert len(provider.nodes()) == 2
        # Launched as the spec's network settings ask: IMDSv2 only, in the zone's subnet
        # with the cluster's group, no public address, the instance profile named.
        runs = [params for op, params in zip(proxy.seen, proxy.params, strict=True) if op == "RunInstances"]
        launches = [run for run in runs if run["InstanceType"] == ["g6.xlarge"]]  # not the foreign one
        assert len(launches) == 2
        for run in launches:
            assert run["MetadataOptions.HttpTokens"] == ["required"]
            assert run["NetworkInterface.1.AssociatePublicIpAddress"] == ["false"]
            assert run["NetworkInterface.1.SecurityGroupId.1"] == [group]
            assert run["IamInstanceProfile.Name"] == ["meridian-node"]
        assert {run["NetworkInterface.1.SubnetId"][0] for run in launches} == set(subnets.values())
        assert release_cloud_nodes(spec, state) == []
        assert provider.nodes() == []
        reply = ec2.describe_instances(InstanceIds=[foreign["InstanceId"]])
        assert reply["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"


def test_a_cloud_that_refuses_down_is_named_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("MERIDIAN_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    from meridian.launcher import release_cloud_nodes

    spec = spec_with(region("aws/us-east-1", {**AWS, "endpoint_url": "http://127.0.0.1:9"}))
    (problem,) = release_cloud_nodes(spec, state_for(spec))
    assert problem.startswith("aws/us-east-1: its instances were not all released")


def test_a_cloud_that_does_not_answer_down_is_named_without_its_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("MERIDIAN_STATE_DIR", str(tmp_path))
    from meridian.launcher import release_cloud_nodes

    spec = spec_with(region("gcp/europe-west4", {**GCP, "api_endpoint": "http://127.0.0.1:9"}))
    (problem,) = release_cloud_nodes(spec, state_for(spec))
    assert problem.startswith("gcp/europe-west4: its instances were not all released (gcp/europe-west4: ")
    assert "127.0.0.1" not in problem


def test_a_local_node_whose_pid_now_belongs_to_another_process_is_lost_not_held(tmp_path, monkeypatch):
    """A node record outliving its `ray start` must not count as capacity because the
    kernel gave its pid to a newer process: the loop would keep the phantom and release
    a real node as surplus."""
    monkeypatch.setenv("MERIDIAN_STATE_DIR", str(tmp_path))
    spec = spec_with(region("local/lab", None))
    state = state_for(spec)
    lab = spec.regions[0]
    block = spec.cluster_ports(lab).node_blocks[0]
    # This test's own process runs under the pid, but was started long after the record.
    LocalNodes(nodes={"local-lab-1": LocalNode(pid=os.getpid(), block=block, launched_at_s=1.0)}).save(state, lab.slug)
    provider = LocalProvider(spec, state, lab)
    assert provider.nodes() == []
    assert [(e.kind, e.node_id) for e in provider.events()] == [(EventKind.PREEMPTED, "local-lab-1")]
    assert LocalNodes.load(state, lab.slug).nodes == {}
