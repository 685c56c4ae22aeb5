"""`meridian render kubernetes`: every core object is valid for a pinned Kubernetes
version, the router and the global loop read an in-cluster spec that reaches each
region through KubeRay's Services, no secret is ever rendered with a value, and the
output is the same bytes as the golden files kept in tests/fixtures/kubernetes.

Set MERIDIAN_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change."""

from __future__ import annotations

import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from meridian.cli import app
from meridian.kubernetes.render import manifests, to_yaml
from meridian_core.spec import load_spec, parse_spec

KUBERNETES_VERSION = "1.33"
GOLDEN = Path(__file__).parents[1] / "fixtures" / "kubernetes"
SPECS = {"local": "configs/local.yaml", "aws-gcp": "configs/examples/aws-gcp.yaml"}


def rendered(repo: Path, spec_path: str) -> dict[str, list[dict]]:
    return manifests(load_spec(repo / spec_path))


def objects_of(files: dict[str, list[dict]], kind: str) -> list[dict]:
    return [obj for objects in files.values() for obj in objects if obj["kind"] == kind]


def with_geoip_and_upgrade(repo: Path) -> dict:
    data = yaml.safe_load((repo / SPECS["aws-gcp"]).read_text())
    data["router"]["locate"] = {"geoip_database": str(repo / "tests/fixtures/geoip/GeoLite2-City-Test.mmdb")}
    data["kubernetes"] = {"incremental_upgrade": {"gateway_class": "istio"}, "geoip_claim": "geoip-db"}
    return data


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_output_is_the_golden_files_byte_for_byte(repo, name):
    files = {file: to_yaml(objects) for file, objects in rendered(repo, SPECS[name]).items()}
    golden = GOLDEN / name
    if os.environ.get("MERIDIAN_UPDATE_GOLDEN") == "1":
        golden.mkdir(parents=True, exist_ok=True)
        for file, text in files.items():
            (golden / file).write_text(text)
    assert sorted(path.name for path in golden.iterdir()) == sorted(files)
    for file, text in files.items():
        assert (golden / file).read_text() == text, f"{name}/{file} differs from its golden file"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_core_object_is_valid_for_the_pinned_kubernetes_version(repo, name):
    files = rendered(repo, SPECS[name])
    files["geoip"] = manifests(parse_spec(with_geoip_and_upgrade(repo)))["router.yaml"]
    core = [obj for objects in files.values() for obj in objects if obj["apiVersion"] != "ray.io/v1"]
    core = [obj for obj in core if obj["kind"] != "Kustomization"]
    assert {obj["kind"] for obj in core} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for obj in core:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_strict_validation_refuses_a_field_kubernetes_does_not_know(repo):
    deployment = objects_of(rendered(repo, SPECS["local"]), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_in_cluster_spec_loads_and_reaches_each_region_through_kuberays_services(repo):
    files = rendered(repo, SPECS["aws-gcp"])
    (config_map,) = objects_of(files, "ConfigMap")
    spec = parse_spec(yaml.safe_load(config_map["data"]["spec.yaml"]))
    east = spec.region("aws/us-east-1")
    assert not east.cluster.managed
    assert east.cluster.address == "meridian-aws-us-east-1-head-svc:6379"
    assert spec.region_endpoint(east) == "http://meridian-aws-us-east-1-serve-svc:8000/aws-us-east-1"
    assert east.token_env == "MERIDIAN_REGION_TOKEN_AWS_US_EAST_1"
    assert (spec.router.host, spec.router.port) == ("0.0.0.0", 8080)
    original = load_spec(repo / SPECS["aws-gcp"])
    assert (spec.models, spec.slo, spec.fleet) == (original.models, original.slo, original.fleet)
    assert (spec.capacity.quotas, spec.capacity.fallback) == (original.capacity.quotas, original.capacity.fallback)
    assert [r.location for r in spec.regions] == [r.location for r in original.regions]
    assert [r.autoscaling for r in spec.regions] == [r.autoscaling for r in original.regions]
    assert spec.router.auth == original.router.auth


def test_secrets_are_referenced_never_rendered_with_a_value(repo):
    files = rendered(repo, SPECS["aws-gcp"])
    router, loop = objects_of(files, "Deployment")
    router_env = {item["name"]: item for item in router["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert router_env["MERIDIAN_API_KEY"] == {
        "name": "MERIDIAN_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "meridian-api-keys", "key": "MERIDIAN_API_KEY"}},
    }
    loop_env = {item["name"]: item for item in loop["spec"]["template"]["spec"]["containers"][0]["env"]}
    for env in (router_env, loop_env):
        for slug in ("aws-us-east-1", "gcp-europe-west4"):
            token = env[f"MERIDIAN_REGION_TOKEN_{slug.upper().replace('-', '_')}"]
            assert token["valueFrom"]["secretKeyRef"] == {"name": f"meridian-{slug}-region-token", "key": "token"}
    assert all("value" not in item for item in [*router_env.values(), *loop_env.values()])
    assert objects_of(files, "Secret") == []


def test_a_key_given_as_a_plain_value_is_refused_naming_the_field(repo, tmp_path):
    data = yaml.safe_load((repo / SPECS["aws-gcp"]).read_text())
    data["router"]["auth"]["keys"][0] = {"name": "default", "key": "sk-plain"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    args = ["render", "kubernetes", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "k")]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2
    assert "router.auth.keys.0" in refused.output and "key: a key is never written in a spec" in refused.output
    assert "sk-plain" not in refused.output
    assert not (tmp_path / "k").exists()


def test_the_router_is_highly_available_and_mounts_the_geoip_database(repo):
    files = manifests(parse_spec(with_geoip_and_upgrade(repo)))
    router = files["router.yaml"]
    deployment, service, budget, autoscaler = router
    kinds = ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]
    assert [obj["kind"] for obj in router] == kinds
    pod = deployment["spec"]["template"]["spec"]
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (2, 6)
    assert budget["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert {"name": "geoip", "persistentVolumeClaim": {"claimName": "geoip-db"}} in pod["volumes"]
    (config_map,) = files["spec-configmap.yaml"]
    in_cluster = yaml.safe_load(config_map["data"]["spec.yaml"])
    assert in_cluster["router"]["locate"]["geoip_database"] == "/var/lib/meridian/geoip/GeoLite2-City-Test.mmdb"
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "geoip", "mountPath": "/var/lib/meridian/geoip", "readOnly": True} in mounts


def test_every_pod_is_non_root_probed_and_sized(repo):
    for name in SPECS:
        files = rendered(repo, SPECS[name])
        templates = [d["spec"]["template"] for d in objects_of(files, "Deployment")]
        for service in objects_of(files, "RayService"):
            cluster = service["spec"]["rayClusterConfig"]
            templates += [cluster["headGroupSpec"]["template"]]
            templates += [group["template"] for group in cluster["workerGroupSpecs"]]
        assert len(templates) == 2 + 2 * len(objects_of(files, "RayService"))
        for template in templates:
            pod = template["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
            for container in pod["containers"]:
                assert container["securityContext"]["allowPrivilegeEscalation"] is False
                assert container["readinessProbe"] and container["livenessProbe"]
                assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
        for obj in [o for objects in files.values() for o in objects if o["kind"] != "Kustomization"]:
            assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "meridian"


def test_the_cli_writes_the_rendered_files_and_a_kustomization_listing_them(repo, tmp_path):
    out = tmp_path / "k8s"
    result = CliRunner().invoke(
        app, ["render", "kubernetes", str(repo / SPECS["aws-gcp"]), "--out", str(out), "--image", "r.example/m:1"]
    )
    assert result.exit_code == 0, result.output
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in out.iterdir() if p.name != "kustomization.yaml")
    images = {
        container["image"]
        for path in out.iterdir()
        for obj in yaml.safe_load_all(path.read_text())
        for container in _containers(obj)
    }
    assert images == {"r.example/m:1"}


def _containers(obj: dict) -> list[dict]:
    if obj["kind"] == "Deployment":
        return obj["spec"]["template"]["spec"]["containers"]
    if obj["kind"] == "RayService":
        cluster = obj["spec"]["rayClusterConfig"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        return [c for group in groups for c in group["template"]["spec"]["containers"]]
    return []
