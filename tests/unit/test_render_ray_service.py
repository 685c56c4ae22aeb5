"""Each region's rendered RayService is what KubeRay's own CRD schema accepts, runs the
region app `meridian serve-config` gives, checks the region's token from a Secret, and
pins the region's replicas to its workers."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.model_app import ModelAppArgs
from deployments.region_app import RegionAppArgs
from meridian.kubernetes.objects import RenderError
from meridian.kubernetes.ray_service import ray_service
from meridian.serve_config import serve_config
from meridian_core.spec import load_spec, parse_spec

CRD = Path(__file__).parents[1] / "fixtures" / "kuberay" / "ray.io_rayservices.yaml"


@pytest.fixture(scope="module")
def ray_service_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    (v1,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def unknown_fields(value: object, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare, as the API server's strict field validation
    refuses them (jsonschema alone lets them through)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict) and "properties" in schema:
        found = [f"{path}.{key}" for key in value if key not in schema["properties"]]
        for key, item in value.items():
            if key in schema["properties"]:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
        return found
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return [f for key, item in value.items() for f in unknown_fields(item, schema["additionalProperties"], key)]
    if isinstance(value, list) and "items" in schema:
        return [
            f for index, item in enumerate(value) for f in unknown_fields(item, schema["items"], f"{path}[{index}]")
        ]
    return []


@pytest.mark.parametrize("spec_path", ["configs/local.yaml", "configs/examples/aws-gcp.yaml"])
def test_every_regions_ray_service_is_valid_against_kuberays_crd(repo, ray_service_schema, spec_path):
    spec = load_spec(repo / spec_path)
    for region in spec.regions:
        rendered = ray_service(spec, region)
        jsonschema.validate(rendered, ray_service_schema)
        assert unknown_fields(rendered, ray_service_schema) == []


def test_the_strict_check_sees_a_field_the_crd_does_not_declare(repo, ray_service_schema):
    spec = load_spec(repo / "configs" / "local.yaml")
    rendered = ray_service(spec, spec.regions[0])
    rendered["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["rayLabels"] = {"a": "b"}
    assert unknown_fields(rendered, ray_service_schema) == [".spec.rayClusterConfig.workerGroupSpecs[0].rayLabels"]


def test_its_serve_config_is_the_regions_own_on_serves_port_with_the_token_from_every_pods_environment(repo):
    spec = load_spec(repo / "configs" / "local.yaml")
    for region in spec.regions:
        service = ray_service(spec, region)
        rendered = yaml.safe_load(service["spec"]["serveConfigV2"])
        ServeDeploySchema.model_validate(rendered)
        assert (
            rendered["applications"]
            == serve_config(spec, region, control_token_env="MERIDIAN_REGION_TOKEN")["applications"]
        )
        control, model = rendered["applications"]
        assert RegionAppArgs.model_validate(control["args"]).control_token_env == "MERIDIAN_REGION_TOKEN"
        assert ModelAppArgs.model_validate(model["args"]).control_token_env == "MERIDIAN_REGION_TOKEN"
        assert rendered["http_options"] == {"host": "0.0.0.0", "port": 8000}
        cluster = service["spec"]["rayClusterConfig"]
        # The control app runs on the head, the model replicas on the workers: each reads the token.
        for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
            (container,) = group["template"]["spec"]["containers"]
            token = next(item for item in container["env"] if item["name"] == "MERIDIAN_REGION_TOKEN")
            secret = {"name": f"meridian-{region.slug}-region-token", "key": "token"}
            assert token["valueFrom"]["secretKeyRef"] == secret


def test_the_serve_config_command_gives_the_same_region_app(repo):
    from typer.testing import CliRunner

    from meridian.cli import app

    spec_path = repo / "configs" / "local.yaml"
    spec = load_spec(spec_path)
    runner = CliRunner()
    args = ["serve-config", str(spec_path), "--region", "local/eu-west", "--token-env", "MERIDIAN_REGION_TOKEN"]
    printed = runner.invoke(app, args)
    assert printed.exit_code == 0, printed.output
    rendered = yaml.safe_load(ray_service(spec, spec.regions[1])["spec"]["serveConfigV2"])
    assert yaml.safe_load(printed.output)["applications"] == rendered["applications"]
    refused = runner.invoke(app, args[:-1] + ["not a name"])
    assert refused.exit_code == 2 and "--token-env" in refused.output


def test_region_app_args_take_one_token_source_at_most(repo):
    from pydantic import ValidationError

    spec = load_spec(repo / "configs" / "local.yaml")
    args = serve_config(spec, spec.regions[0], control_token_env="MERIDIAN_REGION_TOKEN")["applications"][0]["args"]
    with pytest.raises(ValidationError, match="at most one of control_token_sha256 and control_token_env"):
        RegionAppArgs.model_validate({**args, "control_token_sha256": "ab" * 32})


def test_the_regions_workers_carry_its_label_resource_and_accelerator(repo):
    spec = load_spec(repo / "configs" / "examples" / "aws-gcp.yaml")
    service = ray_service(spec, spec.regions[0])
    cluster = service["spec"]["rayClusterConfig"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["labels"] == {"meridian.io/region": "aws-us-east-1"}
    assert workers["resources"] == {"region:aws-us-east-1": "1000"}
    assert "labels" not in workers["rayStartParams"]  # the operator rejects them there
    pod = workers["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert (workers["replicas"], workers["minReplicas"], workers["maxReplicas"]) == (1, 1, 8)
    assert cluster["enableInTreeAutoscaling"] is True  # KubeRay adds workers as Serve asks for replicas
    west = ray_service(spec, spec.regions[1])["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (west["minReplicas"], west["maxReplicas"]) == (0, 8)  # a region that idles to zero keeps no worker
    # Each model is its own deployment with the region's bounds: a worker for each replica of each.
    two_models = spec.model_copy(update={"models": [*spec.models, spec.models[0].model_copy(update={"id": "second"})]})
    doubled = ray_service(two_models, two_models.regions[0])["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (doubled["replicas"], doubled["minReplicas"], doubled["maxReplicas"]) == (2, 2, 16)
    assert cluster["authOptions"] == {"mode": "token", "secretName": "meridian-aws-us-east-1-ray-token"}
    plain = spec.model_copy(update={"ray": spec.ray.model_copy(update={"high_throughput": False})})
    plain_cluster = ray_service(plain, plain.regions[0])["spec"]["rayClusterConfig"]
    for fast_group, plain_group in zip(
        (cluster["headGroupSpec"], workers),
        (plain_cluster["headGroupSpec"], *plain_cluster["workerGroupSpecs"]),
        strict=True,
    ):
        assert fast_group["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        fast_env, plain_env = (
            {item["name"]: item.get("value") for item in group["template"]["spec"]["containers"][0]["env"]}
            for group in (fast_group, plain_group)
        )
        # Serve's mode is the spec's (high-throughput by default), on head and workers alike.
        assert fast_env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == fast_env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in plain_env
        assert fast_env["RAY_num_workers_soft_limit"] == plain_env["RAY_num_workers_soft_limit"] == "0"
        # Ray's usage stats are off unless the spec turns them on, on every pod.
        assert fast_env["RAY_USAGE_STATS_ENABLED"] == plain_env["RAY_USAGE_STATS_ENABLED"] == "0"


def test_incremental_upgrade_is_configured_where_the_spec_asks_for_it(repo, ray_service_schema):
    data = yaml.safe_load((repo / "configs" / "examples" / "aws-gcp.yaml").read_text())
    spec = parse_spec(data)
    assert "upgradeStrategy" not in ray_service(spec, spec.regions[0])["spec"]  # KubeRay's default upgrade
    data["kubernetes"] = {"incremental_upgrade": {"gateway_class": "istio"}}
    rendered = ray_service(parse_spec(data), spec.regions[0])
    assert rendered["spec"]["upgradeStrategy"] == {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {
            "gatewayClassName": "istio",
            "stepSizePercent": 10,
            "intervalSeconds": 30,
            "maxSurgePercent": 10,
        },
    }
    jsonschema.validate(rendered, ray_service_schema)
    assert unknown_fields(rendered, ray_service_schema) == []


def test_an_accelerator_kubernetes_cannot_schedule_fails_naming_the_field(repo):
    data = yaml.safe_load((repo / "configs" / "examples" / "aws-gcp.yaml").read_text())
    data["regions"][1]["accelerator"] = "TPU-v5e"
    data["regions"][1]["capacity"]["machine_types"] = {"TPU-v5e": "ct5lp-hightpu-1t"}
    spec = parse_spec(data)
    with pytest.raises(RenderError, match=r"regions\.1\.accelerator: 'TPU-v5e' has no Kubernetes resource name"):
        ray_service(spec, spec.regions[1])
