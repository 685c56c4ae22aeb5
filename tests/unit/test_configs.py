"""The committed `serve deploy` configs: one per region's cluster, valid under Ray's own
schema, and exactly what `meridian serve-config configs/local.yaml --region R` prints."""

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from meridian.serve_config import MODEL_APP_IMPORT_PATH, REGION_APP_IMPORT_PATH, serve_config
from meridian_core.spec import load_spec

SLUGS = ["local-us-east", "local-eu-west"]
MODEL = "smollm2-135m-instruct"


@pytest.mark.parametrize("slug", SLUGS)
def test_each_clusters_serve_config_matches_ray_schema_and_the_spec(repo, slug):
    spec = load_spec(repo / "configs" / "local.yaml")
    committed = yaml.safe_load((repo / "configs" / "serve" / f"{slug}.yaml").read_text())
    assert committed == serve_config(spec, spec.region(slug))
    schema = ServeDeploySchema.model_validate(committed)
    control, model = schema.applications
    assert (control.name, control.route_prefix, control.import_path) == (slug, f"/{slug}", REGION_APP_IMPORT_PATH)
    assert (model.name, model.route_prefix, model.import_path) == (
        f"{slug}:{MODEL}",
        f"/{slug}/models/{MODEL}",
        MODEL_APP_IMPORT_PATH,
    )
    assert schema.http_options.port == spec.cluster_ports(spec.region(slug)).serve


def test_the_clusters_listen_on_ports_of_their_own(repo):
    spec = load_spec(repo / "configs" / "local.yaml")
    ports = [spec.cluster_ports(region) for region in spec.regions]
    for field in ("gcs", "client_server", "dashboard", "serve"):
        assert len({getattr(p, field) for p in ports}) == len(ports)
    assert not set(ports[0].node_blocks) & set(ports[1].node_blocks)


def test_the_apps_args_accept_the_generated_args(repo):
    from deployments.model_app import ModelAppArgs
    from deployments.region_app import RegionAppArgs

    spec = load_spec(repo / "configs" / "local.yaml")
    for region in spec.regions:
        control, model = serve_config(spec, region, control_token_sha256="ab" * 32)["applications"]
        args = RegionAppArgs.model_validate(control["args"])
        assert args.region.slug == control["name"]
        assert args.models == [MODEL]
        assert args.control_token_sha256 == "ab" * 32
        model_args = ModelAppArgs.model_validate(model["args"])
        assert (model_args.region.slug, model_args.model.id) == (region.slug, MODEL)
        assert model_args.control_token_sha256 == "ab" * 32


def test_every_committed_spec_loads(repo):
    specs = sorted([*(repo / "configs").glob("*.yaml"), *(repo / "configs" / "examples").glob("*.yaml")])
    assert {p.name for p in specs} >= {"local.yaml", "bench.yaml", "sim-global.yaml", "aws-gcp.yaml"}
    for path in specs:
        load_spec(path)
    two_clouds = load_spec(repo / "configs" / "examples" / "aws-gcp.yaml")
    assert [r.capacity.provider for r in two_clouds.regions] == ["aws", "gcp"]
