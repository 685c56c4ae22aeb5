"""platform/observability/: the router dashboard queries only series the router exports,
and the scrape config keeps only the router's `http` port and Ray's `metrics` port.

The router runs for real (`create_app`) against fake regions; requests that succeed,
fail over from a failing region and are rate limited make its labelled series appear
before /metrics is scraped.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from geo_router.live.auth import digest
from meridian.kubernetes.ray_service import ray_service
from meridian_core.spec import load_spec, parse_spec

from ..conftest import REPO
from .fake_regions import CHAT, FakeRegions, running_router

OBSERVABILITY = REPO / "platform" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "meridian-router.json"
SCRAPE_CONFIG = OBSERVABILITY / "prometheus.yml"
KEY = "sk-observability-0123456789"

pytestmark = pytest.mark.timeout(60)

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk"}
AGGREGATIONS |= {"quantile", "limitk", "limit_ratio"}
FUNCTIONS = set(
    """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
    clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv
    double_exponential_smoothing end exp floor histogram_avg histogram_count histogram_fraction histogram_quantile
    histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta increase info irate label_join
    label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_by_label
    sort_by_label_desc sort_desc sqrt start stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp
    vector year""".split()
)
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
KEYWORDS |= {"atan2", "inf", "nan"}

GRAFANA_VARIABLE = re.compile(r"\$\{?\w+(?::\w+)?\}?")
STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
RANGE = re.compile(r"\[[^\[\]]*\]")
LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
TOKEN = re.compile(r"\d[\w.]*|(?P<word>[A-Za-z_:][\w:]*)(?P<call>\s*\()?")


def queried_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects. Unknown functions and `__name__`
    selectors raise, so a query this cannot read fails the test instead of passing it."""
    if "__name__" in expr:
        raise ValueError(f"a __name__ selector hides its metric: {expr}")
    text = STRING.sub('""', GRAFANA_VARIABLE.sub("", expr))
    text = LABEL_LIST.sub(r"\1", RANGE.sub("", LABEL_MATCHERS.sub("", text)))
    names = set()
    for token in TOKEN.finditer(text):
        word = token["word"]
        if word is None or word in KEYWORDS or word in AGGREGATIONS:
            continue
        if token["call"]:
            if word not in FUNCTIONS:
                raise ValueError(f"unknown PromQL function {word!r} in {expr}")
            continue
        names.add(word)
    return names


def variable_expr(query: str) -> str:
    """The PromQL inside a Grafana Prometheus variable query."""
    for pattern in (r"label_values\((.+),\s*\w+\s*\)", r"query_result\((.+)\)"):
        if found := re.fullmatch(pattern, query.strip()):
            return found[1]
    raise ValueError(f"unsupported variable query: {query}")


def exprs(dashboard: Any) -> Iterator[str]:
    """Every PromQL expression of the dashboard: each target's `expr`, in panels and
    rows at any depth, and each query variable's query."""
    if isinstance(dashboard, dict):
        for key, value in dashboard.items():
            if key == "expr":
                yield value
            elif key == "templating":
                for variable in value["list"]:
                    if variable["type"] == "query":
                        query = variable["query"]
                        yield variable_expr(query["query"] if isinstance(query, dict) else query)
            else:
                yield from exprs(value)
    elif isinstance(dashboard, list):
        for item in dashboard:
            yield from exprs(item)


def missing_metrics(dashboard: dict, exported: set[str]) -> set[str]:
    return {name for expr in exprs(dashboard) for name in queried_metrics(expr)} - exported


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """The sample names (with their _total, _bucket, _count, _sum suffixes) on the
    router's /metrics after a failover, a success and a rate-limit refusal."""
    data = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    data["router"]["auth"] = {"keys": [{"name": "team", "sha256": digest(KEY), "requests_per_minute": 1}]}
    fakes = FakeRegions()
    fakes["local-us-east"].mode = "error500"  # answers its polls, fails its requests
    auth = {"Authorization": f"Bearer {KEY}"}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MERIDIAN_ROUTER_ADMIN_TOKEN", "admin-token")  # a router with keys shows metrics to operators
        with running_router(parse_spec(data), fakes) as router:
            assert router.post("/v1/chat/completions", json=CHAT, headers=auth).status_code == 200  # from eu-west
            assert router.post("/v1/chat/completions", json=CHAT, headers=auth).status_code == 429
            text = router.get("/metrics", headers={"Authorization": "Bearer admin-token"}).text
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_every_metric_the_dashboard_queries_is_exported_by_the_router(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for expr in exprs(dashboard) for name in queried_metrics(expr)}
    assert {
        "meridian_router_requests_total",
        "meridian_router_time_to_first_byte_seconds_bucket",
        "meridian_router_request_duration_seconds_bucket",
        "meridian_router_routing_decisions_total",
        "meridian_router_region_healthy",
        "meridian_router_region_breaker_open",
        "meridian_router_in_flight_requests",
        "meridian_router_upstream_errors_total",
        "meridian_router_rate_limited_requests_total",
    } <= queried
    assert missing_metrics(dashboard, exported) == set()


def test_a_dashboard_querying_what_the_router_does_not_export_is_caught(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    broken = copy.deepcopy(dashboard)
    # A counter without its _total suffix, and a metric that does not exist.
    expr = "sum(rate(meridian_router_requests[5m])) / sum(rate(meridian_router_cache_hits_total[5m]))"
    broken["panels"].append({"type": "row", "panels": [{"type": "timeseries", "targets": [{"expr": expr}]}]})
    assert missing_metrics(broken, exported) == {"meridian_router_requests", "meridian_router_cache_hits_total"}


def test_metric_names_are_told_apart_from_functions_labels_strings_and_variables():
    expr = (
        'histogram_quantile(0.95, sum by (le, region) (rate(a_seconds_bucket{region=~"$region", kind!="b_total"}'
        "[$__rate_interval] offset 1h))) / on (region) group_left (model) max without (pod) (c_total) > bool 1e3"
        " and topk(3, d:recorded)"
    )
    assert queried_metrics(expr) == {"a_seconds_bucket", "c_total", "d:recorded"}
    assert queried_metrics(variable_expr('label_values(e_total{namespace=~"$namespace"}, region)')) == {"e_total"}
    with pytest.raises(ValueError, match="rat"):
        queried_metrics("sum(rat(f_total[5m]))")


def test_every_panel_queries_through_the_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"] == ["datasource"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 9
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]


# Prometheus's relabelling (the actions the scrape config uses), on the meta labels its
# Kubernetes pod discovery gives one target per declared container port.
def relabel(labels: dict[str, str], configs: list[dict]) -> dict[str, str] | None:
    labels = dict(labels)
    for config in configs:
        value = config.get("separator", ";").join(labels.get(s, "") for s in config.get("source_labels", []))
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        action = config.get("action", "replace")
        if action == "keep" and not match or action == "drop" and match:
            return None
        if action == "replace" and match:
            result = match.expand(re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", config.get("replacement", "$1")))
            if result:
                labels[config["target_label"]] = result
            else:
                labels.pop(config["target_label"], None)
        elif action not in ("keep", "drop", "replace"):
            raise ValueError(f"relabel action {action!r} is not simulated")
    return {k: v for k, v in labels.items() if not k.startswith("__")}


def pod(name: str, labels: dict[str, str], ports: list[str], phase: str = "Running") -> list[dict[str, str]]:
    meta = {
        "__meta_kubernetes_namespace": "meridian",
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_phase": phase,
        **{"__meta_kubernetes_pod_label_" + re.sub(r"\W", "_", k): v for k, v in labels.items()},
    }
    return [{**meta, "__meta_kubernetes_pod_container_port_name": port} for port in ports]


def test_scrape_config_keeps_only_the_routers_http_port_and_rays_metrics_port():
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"meridian-router", "meridian-ray"}
    assert all(job["kubernetes_sd_configs"] == [{"role": "pod"}] for job in jobs.values())
    router = {"app.kubernetes.io/name": "meridian", "app.kubernetes.io/component": "router"}
    cluster = "meridian-local-us-east-x7k2p"
    region_pod = {"ray.io/cluster": cluster, "meridian.io/region": "local-us-east"}
    targets = [
        *pod("router-a", router, ["http", "grpc"]),
        *pod("router-b", router, ["http"], phase="Pending"),
        *pod("loop", {**router, "app.kubernetes.io/component": "global-loop"}, ["http"]),
        *pod("head", {"ray.io/node-type": "head", **region_pod}, ["gcs", "dashboard", "serve", "metrics"]),
        *pod("worker", {"ray.io/node-type": "worker", **region_pod}, ["metrics"]),
        *pod("other-ray", {"ray.io/node-type": "head", "ray.io/cluster": "raycluster-kuberay"}, ["metrics"]),
        *pod("exporter", {"app.kubernetes.io/name": "node-exporter"}, ["metrics", "http"]),
    ]
    kept = {
        name: [
            (t["__meta_kubernetes_pod_container_port_name"], labels)
            for t in targets
            if (labels := relabel(t, job["relabel_configs"])) is not None
        ]
        for name, job in jobs.items()
    }
    assert kept["meridian-router"] == [("http", {"namespace": "meridian", "pod": "router-a"})]
    ray = {"namespace": "meridian", "ray_io_cluster": cluster, "region": "local-us-east"}
    assert kept["meridian-ray"] == [("metrics", {**ray, "pod": "head"}), ("metrics", {**ray, "pod": "worker"})]


def test_the_scrape_config_keeps_the_ray_pods_meridian_renders_and_names_their_region(repo):
    spec = load_spec(repo / "configs" / "local.yaml")
    jobs = {job["job_name"]: job for job in yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]}
    for region in spec.regions:
        cluster = ray_service(spec, region)["spec"]["rayClusterConfig"]
        for node_type, group in (("head", cluster["headGroupSpec"]), ("worker", cluster["workerGroupSpecs"][0])):
            labels = {**group["template"]["metadata"]["labels"], "ray.io/node-type": node_type}
            (target,) = pod(node_type, labels, ["metrics"])
            assert relabel(target, jobs["meridian-ray"]["relabel_configs"])["region"] == region.slug
            assert relabel(target, jobs["meridian-router"]["relabel_configs"]) is None
