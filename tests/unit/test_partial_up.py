"""`meridian up` with a region whose cluster cannot be reached: that region is named and
left out and the others come up, unless the spec is all-or-nothing."""

from __future__ import annotations

import os
import sys
import time

import pytest
import yaml

from meridian import launcher
from meridian_core.spec import model_app_name, parse_spec
from meridian_host import processes
from meridian_host.platform_state import ClusterState, LocalNode, LocalNodes

AWAY = {"managed": False, "address": "127.0.0.1:9", "dashboard_url": "http://127.0.0.1:9"}


def spec_with(*, all_or_nothing: bool = False, away_too: bool = False):
    lab = {"name": "local/lab", "location": {"lat": 40.0, "lon": -75.0}}
    elsewhere = {"cluster": AWAY, "endpoint": "http://127.0.0.1:9/serve"}
    if away_too:
        lab.update(elsewhere)
    away = {"name": "local/away", "location": {"lat": 50.0, "lon": 8.0}, **elsewhere}
    return parse_spec({"models": [{"id": "m"}], "regions": [lab, away], "all_or_nothing": all_or_nothing})


@pytest.fixture
def started(monkeypatch, tmp_path) -> list[str]:
    """What was deployed and looped; a managed cluster stands in without starting Ray, an
    existing one goes through the launcher's own reachability check."""
    monkeypatch.setenv("MERIDIAN_STATE_DIR", str(tmp_path))
    real_start_cluster = launcher.start_cluster
    steps: list[str] = []

    def start_cluster(spec, state, region, on_step):
        if not region.cluster.managed:
            return real_start_cluster(spec, state, region, on_step)
        state.clusters[region.name] = ClusterState(slug=region.slug, gcs_address="127.0.0.1:1", dashboard_url="x")

    monkeypatch.setattr(launcher, "start_cluster", start_cluster)
    monkeypatch.setattr(launcher, "deploy", lambda spec, state, region, on_step: steps.append(f"deploy {region.name}"))
    monkeypatch.setattr(
        launcher, "start_capacity_loop", lambda state, region, on_step: steps.append(f"loop {region.name}")
    )
    return steps


def test_an_unreachable_cluster_is_named_and_left_out_and_the_others_come_up(started, tmp_path):
    spec = spec_with()
    state = launcher.new_state(spec, tmp_path / "spec.yaml")
    said: list[str] = []
    launcher.start_regions(spec, state, spec.regions, said.append)
    assert started == ["deploy local/lab", "loop local/lab"]
    assert list(state.clusters) == ["local/lab"]
    assert "does not answer" in state.failed_regions["local/away"]
    assert any(line.startswith("left out: local/away: its cluster does not answer") for line in said)
    assert launcher.PlatformState.load(spec.name).failed_regions == state.failed_regions  # saved for status
    progress = {p.name: p.phase for p in launcher.region_progress(spec, state)}
    assert progress == {"local/away": "left out", "local/lab": "deploying"}


def test_all_or_nothing_fails_up_on_that_region(started, tmp_path):
    spec = spec_with(all_or_nothing=True)
    state = launcher.new_state(spec, tmp_path / "spec.yaml")
    with pytest.raises(launcher.LaunchError, match="local/away"):
        launcher.start_regions(spec, state, spec.regions, lambda _: None)


def test_no_region_left_fails_up_naming_each(started, tmp_path):
    spec = spec_with(away_too=True)
    state = launcher.new_state(spec, tmp_path / "spec.yaml")
    with pytest.raises(
        launcher.LaunchError,
        match=r"no region came up: local/lab: its cluster does not answer .*; local/away: its cluster does not answer",
    ):
        launcher.start_regions(spec, state, spec.regions, lambda _: None)
    assert started == []


def test_up_again_tries_a_region_left_out_and_keeps_the_others(started, tmp_path, monkeypatch):
    spec = spec_with()
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    state = launcher.new_state(spec, tmp_path / "spec.yaml")
    launcher.start_regions(spec, state, spec.regions, lambda _: None)
    assert list(state.failed_regions) == ["local/away"]

    def reachable(spec, state, region, on_step):  # the cluster answers now
        state.clusters[region.name] = ClusterState(slug=region.slug, gcs_address="127.0.0.1:1", dashboard_url="x")

    monkeypatch.setattr(launcher, "start_cluster", reachable)
    monkeypatch.setattr(launcher, "is_up", lambda state: True)
    monkeypatch.setattr(launcher, "wait_ready", lambda *args: None)
    monkeypatch.setattr(launcher.models, "pull", lambda source, progress: None)
    started.clear()
    again, already_up = launcher.up(tmp_path / "spec.yaml")
    assert already_up and again.failed_regions == {}
    assert list(again.clusters) == ["local/lab", "local/away"]
    # The running region is only re-applied; the one left out is started.
    assert started == ["deploy local/lab", "deploy local/away", "loop local/away"]


def test_down_forgets_the_local_nodes_it_stopped_so_up_again_finds_their_port_blocks_free(tmp_path, monkeypatch):
    monkeypatch.setenv("MERIDIAN_STATE_DIR", str(tmp_path))
    spec = spec_with()
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    state = launcher.new_state(spec, tmp_path / "spec.yaml")
    lab = spec.regions[0]
    state.clusters[lab.name] = ClusterState(slug=lab.slug, gcs_address="127.0.0.1:1", dashboard_url="x")
    state.save()
    first, second = spec.cluster_ports(lab).node_blocks[:2]
    running = processes.spawn([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "node.log", "p")
    node = LocalNode(pid=running, block=first, launched_at_s=time.time())
    # A record whose node is gone, its pid since given to this test's own process.
    gone = LocalNode(pid=os.getpid(), block=second, launched_at_s=1.0)
    LocalNodes(nodes={f"{lab.slug}-1": node, f"{lab.slug}-2": gone}).save(state, lab.slug)
    stopped: list[int] = []
    terminate_group = processes.terminate_group
    monkeypatch.setattr(launcher.processes, "terminate_group", stopped.append)
    monkeypatch.setattr(launcher.processes, "sweep", lambda platform_id: 0)
    try:
        launcher.down(spec.name)
    finally:
        terminate_group(running, grace_s=5)
    assert running in stopped and os.getpid() not in stopped
    assert LocalNodes.load(state, lab.slug).nodes == {}


def test_a_region_is_as_far_along_as_its_least_ready_app(tmp_path, monkeypatch):
    """A region is its control app and one app per model; `up` reports a model app that
    failed to deploy, with Serve's message, even while the control app runs."""
    spec = spec_with()
    state = launcher.new_state(spec, tmp_path / "spec.yaml")
    lab = next(r for r in spec.regions if r.name == "local/lab")
    state.clusters[lab.name] = ClusterState(slug=lab.slug, gcs_address="127.0.0.1:1", dashboard_url="x")
    state.failed_regions["local/away"] = "its cluster does not answer"
    model_app = model_app_name(lab.slug, spec.models[0].id)
    # The control app still deploying does not hide the model app's failure.
    applications = {lab.slug: {"status": "DEPLOYING"}, model_app: {"status": "DEPLOY_FAILED", "message": "no vLLM"}}
    monkeypatch.setattr(launcher, "serve_applications", lambda state, cluster: applications)
    monkeypatch.setattr(launcher, "router_regions", lambda state: {})
    progress = {p.name: (p.phase, p.detail) for p in launcher.region_progress(spec, state)}
    assert progress["local/lab"] == ("failed", "no vLLM")

    applications[lab.slug] = {"status": "RUNNING"}
    applications[model_app] = {"status": "DEPLOYING"}
    assert launcher.region_app_status(launcher.region_apps(spec, lab, applications)) == ("DEPLOYING", "")
    applications[model_app] = {"status": "RUNNING"}
    assert launcher.region_app_status(launcher.region_apps(spec, lab, applications)) == ("RUNNING", "")
    del applications[model_app]  # not deployed yet
    assert launcher.region_app_status(launcher.region_apps(spec, lab, applications)) == ("NOT_STARTED", "")


def test_a_regions_first_node_starts_with_no_node_record_left_from_an_earlier_run(tmp_path, monkeypatch):
    """Records a run left behind (brought down by a kill, not by `down`) name no node of
    the cluster `up` starts; kept, the capacity loop counted one as capacity and released
    the region's real first node as surplus."""
    monkeypatch.setenv("MERIDIAN_STATE_DIR", str(tmp_path))
    spec = spec_with(away_too=True)
    lab = spec.regions[0]
    state = launcher.new_state(spec, tmp_path / "spec.yaml")
    stale = LocalNode(pid=4_000_000, block=1, launched_at_s=0.0)
    LocalNodes(nodes={f"{lab.slug}-2": stale}).save(state, lab.slug)
    held_at_first_node: list[dict] = []

    class FirstNode:
        def __init__(self, spec, state, region):
            self.state, self.region = state, region

        def acquire(self, placement):
            held_at_first_node.append(LocalNodes.load(self.state, self.region.slug).nodes)

    monkeypatch.setattr(launcher, "_answers", lambda url: True)
    monkeypatch.setattr(launcher, "LocalProvider", FirstNode)
    launcher.start_cluster(spec, state, lab, lambda _: None)
    assert held_at_first_node == [{}]


def test_a_model_apps_engines_are_counted_without_its_replica_router():
    """A model app that may run two replicas also runs Ray Serve LLM's ingress request
    router, one replica per node; `meridian status` counts engines, not routers."""
    engine = {"replicas": [{"state": "RUNNING"}, {"state": "STARTING"}]}
    router = {"replicas": [{"state": "RUNNING"}, {"state": "RUNNING"}]}
    app = {"deployments": {"RegionLLMServer:m": engine, "LLMRouter": router}}
    assert launcher.engine_deployments(app) == [engine]
    assert launcher.engine_deployments({}) == []
