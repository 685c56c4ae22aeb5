"""Each region's rendered RayService is what KubeRay's own CRD schema accepts, runs the
same Serve config as `meridian up`, and pins the region's replicas to its workers."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from meridian.kubernetes.ray_service import RenderError, ray_service
from meridian.serve_config import serve_config
from meridian_core.spec import load_spec

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


def test_its_serve_config_is_the_regions_own_on_serves_port(repo):
    spec = load_spec(repo / "configs" / "local.yaml")
    for region in spec.regions:
        rendered = yaml.safe_load(ray_service(spec, region)["spec"]["serveConfigV2"])
        ServeDeploySchema.model_validate(rendered)
        assert rendered["applications"] == serve_config(spec, region)["applications"]
        assert rendered["http_options"] == {"host": "0.0.0.0", "port": 8000}


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
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 8)
    assert cluster["authOptions"] == {"mode": "token", "secretName": "meridian-aws-us-east-1-ray-token"}
    for group in (cluster["headGroupSpec"], workers):
        env = {item["name"]: item["value"] for item in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
        assert group["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_same_spec_renders_the_same_bytes(repo):
    spec = load_spec(repo / "configs" / "examples" / "aws-gcp.yaml")
    once = [yaml.safe_dump(ray_service(spec, region)) for region in spec.regions]
    assert once == [yaml.safe_dump(ray_service(spec, region)) for region in spec.regions]


def test_an_accelerator_kubernetes_cannot_schedule_fails_naming_the_field(repo):
    data = yaml.safe_load((repo / "configs" / "examples" / "aws-gcp.yaml").read_text())
    data["regions"][1]["accelerator"] = "TPU-v5e"
    data["regions"][1]["capacity"]["machine_types"] = {"TPU-v5e": "ct5lp-hightpu-1t"}
    from meridian_core.spec import parse_spec

    spec = parse_spec(data)
    with pytest.raises(RenderError, match=r"regions\.1\.accelerator: 'TPU-v5e' has no Kubernetes resource name"):
        ray_service(spec, spec.regions[1])


def test_the_cli_writes_one_file_per_region_and_names_a_field_it_cannot_render(repo, tmp_path):
    from typer.testing import CliRunner

    from meridian.cli import app

    runner = CliRunner()
    spec = repo / "configs" / "examples" / "aws-gcp.yaml"
    result = runner.invoke(app, ["render", "kubernetes", str(spec), "--out", str(tmp_path / "k8s")])
    assert result.exit_code == 0, result.output
    written = sorted(path.name for path in (tmp_path / "k8s").iterdir())
    assert written == ["aws-us-east-1-rayservice.yaml", "gcp-europe-west4-rayservice.yaml"]
    loaded = load_spec(spec)
    assert yaml.safe_load((tmp_path / "k8s" / written[0]).read_text()) == ray_service(loaded, loaded.regions[0])

    data = yaml.safe_load(spec.read_text())
    data["regions"][1]["accelerator"] = "TPU-v5e"
    data["regions"][1]["capacity"]["machine_types"] = {"TPU-v5e": "ct5lp-hightpu-1t"}
    (tmp_path / "tpu.yaml").write_text(yaml.safe_dump(data))
    refused = runner.invoke(app, ["render", "kubernetes", str(tmp_path / "tpu.yaml"), "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "regions.1.accelerator" in refused.output
    assert not (tmp_path / "x").exists()  # nothing half-written
