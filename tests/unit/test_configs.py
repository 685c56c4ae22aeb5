import yaml
from ray.serve.schema import ServeDeploySchema

from meridian.serve_config import REGION_APP_IMPORT_PATH, serve_config
from meridian_core.spec import load_spec


def test_serve_config_matches_ray_schema(repo):
    data = yaml.safe_load((repo / "configs" / "serve" / "local.yaml").read_text())
    schema = ServeDeploySchema.model_validate(data)
    assert [app.name for app in schema.applications] == ["local-us-east", "local-eu-west"]
    assert {app.route_prefix for app in schema.applications} == {"/local-us-east", "/local-eu-west"}
    assert all(app.import_path == REGION_APP_IMPORT_PATH for app in schema.applications)


def test_committed_serve_config_is_generated_from_the_spec(repo):
    """configs/serve/local.yaml must say what `meridian serve-config configs/local.yaml` says."""
    committed = yaml.safe_load((repo / "configs" / "serve" / "local.yaml").read_text())
    assert committed == serve_config(load_spec(repo / "configs" / "local.yaml"))


def test_region_app_args_accept_the_generated_args(repo):
    from deployments.region_app import RegionAppArgs

    for app in serve_config(load_spec(repo / "configs" / "local.yaml"))["applications"]:
        args = RegionAppArgs.model_validate(app["args"])
        assert args.region.slug == app["name"]
        assert args.models[0].id == "smollm2-135m-instruct"
