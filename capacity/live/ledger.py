"""What a region's capacity loop saw and held, on disk for `meridian capacity report`
and `meridian status`.

Two files in the region's state directory: `capacity-events.jsonl`, one capacity event a
line (stockouts, quota refusals, preemptions, launches, terminations), and
`capacity-nodes.json`, the nodes held and the demand at the last tick. Both are written
from capacity/model.py's types and validated against them when read; a line that breaks
them is reported (`on_malformed`: the capacity loop logs and counts it) and skipped,
never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from capacity.model import CapacityEvent, Node
from meridian_core.contracts import MalformedMessage
from meridian_host.platform_state import write_atomically

EVENTS_FILE = "capacity-events.jsonl"
NODES_FILE = "capacity-nodes.json"
log = logging.getLogger("meridian.capacity")
_EVENT = TypeAdapter(CapacityEvent)


@dataclass(frozen=True)
class Snapshot:
    at_s: float
    nodes: tuple[Node, ...]
    # (cloud, region) -> nodes wanted there
    demand: dict[tuple[str, str], int]


class _Demand(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cloud: str
    region: str
    nodes: int


class _SnapshotFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float
    nodes: tuple[Node, ...]
    demand: tuple[_Demand, ...]


def _log_malformed(error: MalformedMessage) -> None:
    log.warning("%s; skipped", error)


class Ledger:
    def __init__(self, directory: Path, on_malformed: Callable[[MalformedMessage], None] = _log_malformed):
        self.directory = directory
        self.on_malformed = on_malformed

    def record_events(self, events: Iterable[CapacityEvent]) -> None:
        lines = [_EVENT.dump_json(event).decode() for event in events]
        if lines:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.directory / EVENTS_FILE, "a") as out:
                out.write("\n".join(lines) + "\n")

    def events(self, since_s: float = 0.0) -> list[CapacityEvent]:
        path = self.directory / EVENTS_FILE
        if not path.exists():
            return []
        events = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                event = _EVENT.validate_json(line)
            except ValidationError as error:
                fields = sorted({".".join(map(str, e["loc"])) or "(line)" for e in error.errors()})
                self.on_malformed(
                    MalformedMessage("CapacityEvent", f"{path.name} line {number}: bad {', '.join(fields[:5])}")
                )
                continue
            if event.at_s >= since_s:
                events.append(event)
        return events

    def record_snapshot(self, snapshot: Snapshot) -> None:
        demand = tuple(_Demand(cloud=c, region=r, nodes=n) for (c, r), n in snapshot.demand.items())
        data = _SnapshotFile(at_s=snapshot.at_s, nodes=snapshot.nodes, demand=demand)
        write_atomically(self.directory / NODES_FILE, data.model_dump_json(indent=1))

    def snapshot(self) -> Snapshot | None:
        path = self.directory / NODES_FILE
        if not path.exists():
            return None
        try:
            data = _SnapshotFile.model_validate_json(path.read_text())
        except ValidationError:
            log.warning("%s does not hold a capacity snapshot; ignored", path)
            return None
        return Snapshot(data.at_s, data.nodes, {(d.cloud, d.region): d.nodes for d in data.demand})


def fleet_ledger(ledgers: Sequence[Ledger], since_s: float) -> tuple[Snapshot | None, list[CapacityEvent]]:
    """Every region's ledger read as one: the nodes and demand of all their snapshots
    (timed by the oldest), and their events since `since_s`, oldest first."""
    snapshots = [s for s in (ledger.snapshot() for ledger in ledgers) if s is not None]
    events = sorted((e for ledger in ledgers for e in ledger.events(since_s)), key=lambda e: e.at_s)
    if not snapshots:
        return None, events
    merged = Snapshot(
        min(s.at_s for s in snapshots),
        tuple(node for s in snapshots for node in s.nodes),
        {home: nodes for s in snapshots for home, nodes in s.demand.items()},
    )
    return merged, events
