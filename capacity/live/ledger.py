"""What the capacity loop saw and held, on disk for `meridian capacity report`.

Two files in the platform's state directory: `capacity-events.jsonl`, one capacity
event a line (stockouts, quota refusals, preemptions, launches, terminations), and
`capacity-nodes.json`, the nodes held and the demand at the last tick.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from capacity.model import CapacityEvent, EventKind, Market, Node, NodeState, Placement

EVENTS_FILE = "capacity-events.jsonl"
NODES_FILE = "capacity-nodes.json"


@dataclass(frozen=True)
class Snapshot:
    at_s: float
    nodes: tuple[Node, ...]
    # (cloud, region) -> replicas' worth of nodes wanted there
    demand: dict[tuple[str, str], int]


def _placement(data: dict) -> Placement:
    return Placement(data["cloud"], data["region"], data["zone"], data["instance_type"], Market(data["market"]))


class Ledger:
    def __init__(self, directory: Path):
        self.directory = directory

    def record_events(self, events: Iterable[CapacityEvent]) -> None:
        lines = [json.dumps({**asdict(e), "kind": str(e.kind)}) for e in events]
        if lines:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(self.directory / EVENTS_FILE, "a") as out:
                out.write("\n".join(lines) + "\n")

    def events(self, since_s: float = 0.0) -> list[CapacityEvent]:
        path = self.directory / EVENTS_FILE
        if not path.exists():
            return []
        events = []
        for line in path.read_text().splitlines():
            data = json.loads(line)
            if data["at_s"] >= since_s:
                events.append(
                    CapacityEvent(
                        EventKind(data["kind"]),
                        _placement(data["placement"]),
                        data["at_s"],
                        data["node_id"],
                        data["message"],
                    )  # fmt: skip
                )
        return events

    def record_snapshot(self, snapshot: Snapshot) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {
            "at_s": snapshot.at_s,
            "nodes": [asdict(n) for n in snapshot.nodes],
            "demand": [{"cloud": c, "region": r, "replicas": n} for (c, r), n in snapshot.demand.items()],
        }
        tmp = self.directory / f"{NODES_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.directory / NODES_FILE)

    def snapshot(self) -> Snapshot | None:
        path = self.directory / NODES_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        nodes = tuple(
            Node(n["id"], _placement(n["placement"]), NodeState(n["state"]), n["launched_at_s"]) for n in data["nodes"]
        )
        return Snapshot(data["at_s"], nodes, {(d["cloud"], d["region"]): d["replicas"] for d in data["demand"]})
