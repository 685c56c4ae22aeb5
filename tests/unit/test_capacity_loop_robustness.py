"""A region's capacity loop and its ledger against what goes wrong in production: a
ledger line cut by a crash, a published view that breaks its contract, a target past the
region's bound, a tick that fails. Same provider double as tests/unit/test_capacity_loop.py."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
from pydantic import TypeAdapter

from autoscaler.live.published import decision_key
from capacity.live import ledger as ledger_module
from capacity.live.capacity_loop import CapacityLoop, published_scaling, supervised_tick
from capacity.live.ledger import EVENTS_FILE, NODES_FILE, Ledger, Snapshot, fleet_ledger
from capacity.live.local import local_catalog, placement_for
from capacity.model import CapacityEvent, EventKind, Node, NodeState, ProviderError
from meridian_core.contracts import MalformedMessage
from meridian_core.spec import PlatformSpec, parse_spec
from tests.unit.test_capacity_loop import SPEC, ProviderDouble, loop_for, view

_EVENT = TypeAdapter(CapacityEvent)


@pytest.fixture
def spec() -> PlatformSpec:
    return parse_spec(SPEC)


@pytest.fixture
def kv(monkeypatch) -> dict[str, bytes]:
    """The clusters' internal KV as the published-view reader gets it, by key."""
    from ray.experimental import internal_kv

    table: dict[str, bytes] = {}

    def keys(prefix: str, namespace=None) -> list[bytes]:
        return [key.encode() for key in table if key.startswith(prefix)]

    monkeypatch.setattr(internal_kv, "_internal_kv_list", keys)
    monkeypatch.setattr(internal_kv, "_internal_kv_get", lambda key, namespace=None: table.get(key.decode()))
    return table


def stockout(spec: PlatformSpec, at_s: float, message: str = "") -> CapacityEvent:
    return CapacityEvent(EventKind.STOCKOUT, placement_for(spec, spec.regions[0]), at_s, message=message)


def cut_inside_a_character(spec: PlatformSpec) -> bytes:
    """An event line as a crash leaves it: its write stopped inside the two bytes of "é"."""
    whole = _EVENT.dump_json(stockout(spec, 30.0, "zone épuisée"))
    return whole[: whole.index("é".encode()) + 1]


def append_raw(ledger: Ledger, data: bytes) -> None:
    with open(ledger.directory / EVENTS_FILE, "ab") as out:
        out.write(data)


# 1. The ledger's event log.


def test_a_line_cut_inside_a_character_is_skipped_and_counted_and_the_tick_goes_on(spec, tmp_path):
    provider = ProviderDouble(spec)
    loop, reports = loop_for(spec, "local/us-east", provider, tmp_path, target=2)
    loop.ledger.record_events([stockout(spec, 90.0)])
    append_raw(loop.ledger, cut_inside_a_character(spec))
    loop.tick()
    # The tick ran whole, and read the stockout before the cut line: its zone is backed off.
    (report,) = reports
    assert provider.nodes() == [] and report.unplaced_replicas == 2 and "backed off" in report.reason
    assert loop.ledger.snapshot().at_s == 100.0 and loop.ledger.skipped_lines == 1


def test_an_append_after_a_crash_starts_its_own_line_so_only_the_cut_one_is_lost(spec, tmp_path):
    ledger = Ledger(tmp_path, on_malformed=lambda error: None)
    ledger.record_events([stockout(spec, 10.0)])
    append_raw(ledger, b'{"kind": "stockout", "placem')  # the process died here
    ledger.record_events([stockout(spec, 20.0)])
    assert [e.at_s for e in ledger.events()] == [10.0, 20.0]
    assert ledger.skipped_lines == 1


def test_unreadable_lines_are_reported_once_with_their_count_and_numbers_never_their_content(spec, tmp_path):
    malformed: list[MalformedMessage] = []
    ledger = Ledger(tmp_path, on_malformed=malformed.append)
    ledger.record_events([stockout(spec, 10.0)])
    append_raw(ledger, b'{"kind": "stockout", "at_s": "s3cret"}\n')
    ledger.record_events([stockout(spec, 20.0)])
    append_raw(ledger, b"s3cret-too\n")
    assert [e.at_s for e in ledger.events()] == [10.0, 20.0]
    assert [e.at_s for e in ledger.events(since_s=15.0)] == [20.0]  # a later read: nothing new to say
    (error,) = malformed
    assert error.contract == "CapacityEvent" and "2 unreadable lines (lines 2, 4)" in str(error)
    assert "s3cret" not in str(error) and ledger.skipped_lines == 2
    append_raw(ledger, b"{\n")
    ledger.events()
    assert len(malformed) == 2 and "3 unreadable lines (lines 2, 4, 5)" in str(malformed[-1])


def test_an_event_whose_message_holds_a_unicode_line_separator_reads_back_whole(spec, tmp_path):
    malformed: list[MalformedMessage] = []
    ledger = Ledger(tmp_path, on_malformed=malformed.append)
    event = stockout(spec, 10.0, "InsufficientCapacity\u2028retry later\x85")  # as a cloud may word it
    ledger.record_events([event])
    assert ledger.events() == [event] and malformed == []


def test_the_capacity_report_reads_past_unreadable_lines_and_says_how_many(spec, tmp_path, caplog):
    east, west = Ledger(tmp_path / "east"), Ledger(tmp_path / "west")
    east.record_snapshot(Snapshot(100.0, (), {("local", "local-us-east"): 1}))
    east.record_events([stockout(spec, 90.0)])
    append_raw(east, cut_inside_a_character(spec))
    west.record_events([stockout(spec, 95.0)])
    with caplog.at_level(logging.WARNING, "meridian.capacity"):
        snapshot, events = fleet_ledger([east, west], since_s=0.0)
    assert snapshot is not None and [e.at_s for e in events] == [90.0, 95.0]
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "meridian.capacity"]
    assert "1 unreadable line (line 2)" in warning and "puis" not in warning
    assert (east.skipped_lines, west.skipped_lines) == (1, 0)


def test_events_are_appended_with_one_write_on_an_append_only_descriptor(spec, tmp_path, monkeypatch):
    ledger = Ledger(tmp_path)
    ledger.record_events([stockout(spec, 10.0)])
    opened: dict[int, int] = {}
    writes: list[tuple[int, bytes]] = []
    real_open, real_write = os.open, os.write

    def spy_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        opened[fd] = flags
        return fd

    def spy_write(fd, data):
        writes.append((fd, bytes(data)))
        return real_write(fd, data)

    monkeypatch.setattr(ledger_module.os, "open", spy_open)
    monkeypatch.setattr(ledger_module.os, "write", spy_write)
    batch = [stockout(spec, 20.0), stockout(spec, 30.0)]
    ledger.record_events(batch)
    monkeypatch.undo()
    ((fd, data),) = writes
    assert opened[fd] & os.O_APPEND
    assert data == b"".join(_EVENT.dump_json(e) + b"\n" for e in batch)
    assert [e.at_s for e in ledger.events()] == [10.0, 20.0, 30.0]


def test_the_snapshot_is_fsynced_before_it_replaces_the_old_one_and_its_directory_after(spec, tmp_path, monkeypatch):
    ledger = Ledger(tmp_path)
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def spy_fsync(fd):
        steps.append(f"fsync {os.path.basename(os.readlink(f'/proc/self/fd/{fd}'))}")
        real_fsync(fd)

    def spy_replace(source, destination):
        steps.append(f"replace {os.path.basename(source)} -> {os.path.basename(destination)}")
        real_replace(source, destination)

    monkeypatch.setattr(ledger_module.os, "fsync", spy_fsync)
    monkeypatch.setattr(ledger_module.os, "replace", spy_replace)
    node = Node("a", placement_for(spec, spec.regions[0]), NodeState.RUNNING, 0.0)
    ledger.record_snapshot(Snapshot(100.0, (node,), {("local", "local-us-east"): 1}))
    monkeypatch.undo()
    temp = steps[0].removeprefix("fsync ")
    assert steps == [f"fsync {temp}", f"replace {temp} -> {NODES_FILE}", f"fsync {tmp_path.name}"]
    assert os.listdir(tmp_path) == [NODES_FILE] and ledger.snapshot().nodes == (node,)


def test_a_snapshot_that_is_not_text_is_ignored_not_fatal(tmp_path):
    (tmp_path / NODES_FILE).write_bytes(b'{"at_s": 1.0, "nodes": [\xc3')
    assert Ledger(tmp_path).snapshot() is None


# 2. A published view that breaks its contract.


def test_a_broken_view_holds_that_regions_nodes_for_the_tick_and_the_other_region_goes_on(spec, tmp_path, kv):
    malformed: list[MalformedMessage] = []
    providers: dict[str, ProviderDouble] = {}
    loops: dict[str, CapacityLoop] = {}
    for region in spec.regions:
        providers[region.slug] = ProviderDouble(spec)
        loops[region.slug] = CapacityLoop(
            spec,
            region,
            providers[region.slug],
            Ledger(tmp_path / region.slug),
            local_catalog(spec, region),
            scaling=lambda region=region: published_scaling(region),
            report=lambda report: None,
            clock=lambda: 100.0,
            on_malformed=malformed.append,
        )
    east, west = (region.slug for region in spec.regions)
    kv[decision_key(east, "m")] = view(4).model_dump_json().encode()
    kv[decision_key(west, "m")] = view(2).model_dump_json().encode()
    for loop in loops.values():
        loop.tick()
    held = dict(providers[east].held)
    assert len(held) == 2 and len(providers[west].nodes()) == 1

    broken = view(1).model_dump()
    del broken["target"]
    broken["own_target"] = "s3cret"
    kv[decision_key(east, "m")] = TypeAdapter(dict).dump_json(broken)
    kv[decision_key(west, "m")] = view(4).model_dump_json().encode()
    assert loops[east].tick() is None  # not planned from a fallback count: nothing bought, nothing released
    loops[west].tick()
    assert providers[east].held == held and len(providers[west].nodes()) == 2
    (error,) = malformed
    assert error.contract == "ScalingView" and "own_target, target" in str(error) and "s3cret" not in str(error)

    kv[decision_key(east, "m")] = view(1).model_dump_json().encode()
    loops[east].tick()  # a readable view again: the region follows it
    assert len(providers[east].nodes()) == 1


def test_a_region_with_several_autoscaled_models_gets_nodes_for_all_of_them(tmp_path, kv):
    # Each model's deployment runs its own policy; before, they shared one key and the
    # model that wrote last decided the region's nodes.
    spec = parse_spec({**SPEC, "models": [{"id": "chat"}, {"id": "embed"}]})
    region = spec.regions[0]
    provider = ProviderDouble(spec)
    loop = CapacityLoop(
        spec,
        region,
        provider,
        Ledger(tmp_path),
        local_catalog(spec, region),
        scaling=lambda: published_scaling(region),
        report=lambda report: None,
        clock=lambda: 100.0,
    )
    kv[decision_key(region.slug, "chat")] = view(3).model_copy(update={"at": 100.0}).model_dump_json().encode()
    kv[decision_key(region.slug, "embed")] = view(2).model_copy(update={"at": 98.0}).model_dump_json().encode()
    # A model no longer deployed: its last view stays in the KV but is long stale.
    kv[decision_key(region.slug, "retired")] = view(4).model_copy(update={"at": 10.0}).model_dump_json().encode()
    loop.tick()
    assert len(provider.nodes()) == 3  # 5 replicas, two a node


# 3. A target past the region's bound.


def test_a_target_over_max_replicas_buys_for_max_replicas_and_is_logged_once(spec, tmp_path, caplog):
    provider = ProviderDouble(spec)
    loop, _ = loop_for(spec, "local/us-east", provider, tmp_path, target=500)
    with caplog.at_level(logging.WARNING, "meridian.capacity"):
        loop.tick()
        loop.tick()
    assert len(provider.nodes()) == 2  # max_replicas 4, two a node; not 250
    (warning,) = [r.getMessage() for r in caplog.records if "max_replicas" in r.getMessage()]
    assert "500" in warning and "4" in warning


# Supervision.


class FailingProvider(ProviderDouble):
    """Fails `nodes()` with the errors queued in `failures`, then works."""

    def __init__(self, spec: PlatformSpec, failures: list[Exception]):
        super().__init__(spec)
        self.failures = failures

    def nodes(self):
        if self.failures:
            raise self.failures.pop(0)
        return super().nodes()


def test_a_failed_tick_is_logged_and_counted_and_the_loop_goes_on_even_if_counting_fails(spec, tmp_path, caplog):
    failures: list[Exception] = [
        ProviderError("local/us-east", "DescribeInstances", "UnauthorizedOperation"),
        RuntimeError("unexpected"),
        RuntimeError("unexpected again"),
    ]
    provider = FailingProvider(spec, failures)
    loop, reports = loop_for(spec, "local/us-east", provider, tmp_path, target=2)
    counted: list[str] = []

    def count_that_fails(kind: str) -> None:
        raise ValueError("metrics agent away")

    with caplog.at_level(logging.WARNING, "meridian.capacity"):
        supervised_tick(loop, counted.append)
        supervised_tick(loop, counted.append)
        supervised_tick(loop, count_that_fails)
        supervised_tick(loop, counted.append)
    assert counted == ["provider", "unexpected"]
    assert any("could not count" in r.getMessage() for r in caplog.records)
    assert len(provider.nodes()) == 1 and len(reports) == 1  # the fourth tick ran whole


def test_the_report_command_says_how_many_event_lines_it_skipped(repo, spec, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from meridian.cli import app
    from meridian_core.spec import load_spec
    from meridian_host.platform_state import cluster_dir

    monkeypatch.setenv("MERIDIAN_STATE_DIR", str(tmp_path))
    local = load_spec(repo / "configs" / "local.yaml")
    east = Ledger(cluster_dir(local.name, local.regions[0].slug))
    east.record_snapshot(Snapshot(time.time(), (), {("local", local.regions[0].slug): 1}))
    append_raw(east, cut_inside_a_character(spec))
    shown = CliRunner().invoke(app, ["capacity", "report", str(repo / "configs" / "local.yaml"), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["skipped_event_lines"] == 1
