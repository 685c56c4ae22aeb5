"""The committed `serve deploy` configs: one per region's cluster, valid under Ray's own
schema, and exactly what `meridian serve-config configs/local.yaml --region R` prints."""

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from meridian.serve_config import REGION_APP_IMPORT_PATH, serve_config
from meridian_core.spec import load_spec

SLUGS = ["local-us-east", "local-eu-west"]


@pytest.mark.parametrize("slug", SLUGS)
def test_each_clusters_serve_config_matches_ray_schema_and_the_spec(repo, slug):
    spec = load_spec(repo / "configs" / "local.yaml")
    committed = yaml.safe_load((repo / "configs" / "serve" / f"{slug}.yaml").read_text())
    assert committed == serve_config(spec, spec.region(slug))
    schema = ServeDeploySchema.model_validate(committed)
    (app,) = schema.applications
    assert (app.name, app.route_prefix, app.import_path) == (slug, f"/{slug}", REGION_APP_IMPORT_PATH)
    assert schema.http_options.port == spec.cluster_ports(spec.region(slug)).serve


def test_the_clusters_listen_on_ports_of_their_own(repo):
    spec = load_spec(repo / "configs" / "local.yaml")
    ports = [spec.cluster_ports(region) for region in spec.regions]
    for field in ("gcs", "client_server", "dashboard", "serve"):
        assert len({getattr(p, field) for p in ports}) == len(ports)
    assert not set(ports[0].node_blocks) & set(ports[1].node_blocks)


def test_region_app_args_accept_the_generated_args(repo):
    from deployments.region_app import RegionAppArgs

    spec = load_spec(repo / "configs" / "local.yaml")
    for region in spec.regions:
        (app,) = serve_config(spec, region, control_token_sha256="ab" * 32)["applications"]
        args = RegionAppArgs.model_validate(app["args"])
        assert args.region.slug == app["name"]
        assert args.models[0].id == "smollm2-135m-instruct"
        assert args.control_token_sha256 == "ab" * 32


def test_every_committed_spec_loads(repo):
    specs = sorted([*(repo / "configs").glob("*.yaml"), *(repo / "configs" / "examples").glob("*.yaml")])
    assert {p.name for p in specs} >= {"local.yaml", "bench.yaml", "sim-global.yaml", "aws-gcp.yaml"}
    for path in specs:
        load_spec(path)
    two_clouds = load_spec(repo / "configs" / "examples" / "aws-gcp.yaml")
    assert [r.capacity.provider for r in two_clouds.regions] == ["aws", "gcp"]
