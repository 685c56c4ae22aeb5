from pathlib import Path

import pytest
import yaml

from meridian_core.spec import (
    PackagedModelSource,
    PathModelSource,
    SpecError,
    load_spec,
    model_app_name,
    model_route,
    parse_spec,
)


def local_spec_data(repo: Path) -> dict:
    return yaml.safe_load((repo / "configs" / "local.yaml").read_text())


def test_default_spec_loads(repo):
    spec = load_spec(repo / "configs" / "local.yaml")
    assert [r.name for r in spec.regions] == ["local/us-east", "local/eu-west"]
    assert spec.region("local/eu-west").slug == "local-eu-west"
    assert isinstance(spec.models[0].source, PackagedModelSource)
    assert spec.slo.ttft_p95_ms > 0 and spec.slo.itl_p95_ms > 0
    assert spec.region_endpoint(spec.regions[0]) == f"http://127.0.0.1:{spec.ray.serve_port}/local-us-east"


@pytest.mark.parametrize(
    "mutate, path, words",
    [
        (lambda d: d["regions"][1]["location"].update(lat=200), "regions.1.location.lat", "less than or equal to 90"),
        (lambda d: d["regions"][0].update(replicaz=2), "regions.0.replicaz", "Extra inputs are not permitted"),
        (lambda d: d["regions"][0].update(name="US East"), "regions.0.name", "'<cloud>/<region>'"),
        (lambda d: d["router"].update(port=70000), "router.port", "less than or equal to 65535"),
        (lambda d: d["models"][0].update(source={"kind": "ftp"}), "models.0.source", "kind"),
        (lambda d: d["models"][0].update(source={"kind": "path"}), "models.0.source.path.path", "Field required"),
        (lambda d: d.update(regions=[]), "regions", "at least 1 item"),
        (lambda d: d["slo"].update(ttft_p95_ms=-1), "slo.ttft_p95_ms", "greater than 0"),
        (lambda d: d["regions"][1].update(profile="h100"), "regions.1.profile", "unknown replica profile 'h100'"),
    ],
)
def test_bad_field_is_named(repo, mutate, path, words):
    data = local_spec_data(repo)
    mutate(data)
    with pytest.raises(SpecError) as error:
        parse_spec(data, origin="local.yaml")
    message = str(error.value)
    assert f"{path}:" in message
    assert words in message


def test_a_region_declares_its_replica_profile(repo):
    data = local_spec_data(repo)
    assert {r.profile for r in parse_spec(data).regions} == {"smollm2-135m-cpu"}  # the default
    data["regions"][0]["profile"] = "llama-3.1-8b-h100"
    assert parse_spec(data).regions[0].profile == "llama-3.1-8b-h100"
    data["regions"][0]["profile"] = "llama-3.1-8b-a100"
    with pytest.raises(SpecError) as error:
        parse_spec(data, origin="local.yaml")
    assert "regions.0.profile:" in str(error.value)
    assert "llama-3.1-8b-a100" in str(error.value) and "llama-3.1-8b-h100" in str(error.value)  # the known ones
    # The profile is the region's, not its autoscaler's.
    data["regions"][0]["profile"] = "llama-3.1-8b-h100"
    data["regions"][0]["autoscaling"] = {"max_replicas": 2, "profile": "llama-3.1-8b-h100"}
    with pytest.raises(SpecError, match=r"regions\.0\.autoscaling\.profile: Extra inputs are not permitted"):
        parse_spec(data)


def test_duplicate_regions_rejected(repo):
    data = local_spec_data(repo)
    data["regions"].append(dict(data["regions"][0]))
    with pytest.raises(SpecError, match=r"duplicate names \['local/us-east'\]"):
        parse_spec(data)


def test_path_source_parses(repo):
    data = local_spec_data(repo)
    data["models"][0]["source"] = {"kind": "path", "path": "/models/smol"}
    spec = parse_spec(data)
    assert spec.models[0].source == PathModelSource(kind="path", path=Path("/models/smol"))


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("regions: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(scalar)


@pytest.mark.parametrize("start, words", [(31000, "below the ephemeral range"), (7000, "ray.serve_port")])
def test_worker_ports_must_not_collide(repo, start, words):
    data = local_spec_data(repo)
    data["ray"]["node_ports_from"] = start
    data["ray"]["serve_port"] = 8000
    with pytest.raises(SpecError, match="ray.node_ports_from") as error:
        parse_spec(data)
    assert words in str(error.value)


def test_shipped_specs_load(repo):
    for path in [repo / "configs" / "bench.yaml", repo / "tests" / "e2e" / "e2e.yaml"]:
        assert load_spec(path).regions


def test_a_models_app_is_named_without_slashes_and_routed_under_its_region():
    """Ray names log files after an app: a slash in its name is a directory that is not there."""
    assert model_app_name("aws-us-east-1", "org/llama-3.1") == "aws-us-east-1:org:llama-3.1"
    assert model_app_name("aws-us-east-1", "org/a") != model_app_name("aws-us-east-1", "org-a")
    assert model_route("org/llama-3.1") == "/models/org/llama-3.1"
