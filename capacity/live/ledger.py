"""What a region's capacity loop saw and held, on disk for `meridian capacity report`
and `meridian status`.

Two files in the region's state directory: `capacity-events.jsonl`, one capacity event a
line (stockouts, quota refusals, preemptions, launches, terminations), and
`capacity-nodes.json`, the nodes held and the demand at the last tick. Both are written
from capacity/model.py's types and validated against them when read.

A crash must not leave a file that stops the loop or the report: events are appended
whole in one write, so a crash leaves at most one partial last line, and the next append
starts a line of its own; a line that cannot be read (cut short, or not an event) is
skipped and counted (`Ledger.skipped_lines`), and reported by number, never by content
(`on_malformed`: the capacity loop logs and counts it). The snapshot is replaced whole
and synced to disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from capacity.model import CapacityEvent, Node
from meridian_core.contracts import MalformedMessage

EVENTS_FILE = "capacity-events.jsonl"
NODES_FILE = "capacity-nodes.json"
log = logging.getLogger("meridian.capacity")
_EVENT = TypeAdapter(CapacityEvent)
# Line numbers named in one report of unreadable lines.
MAX_LINES_NAMED = 10


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


def log_malformed(error: MalformedMessage) -> None:
    log.warning("%s; skipped", error)


def _append(path: Path, data: bytes) -> None:
    """`data` at the end of `path` in one write on an O_APPEND descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        end = os.fstat(fd).st_size
        if end and os.pread(fd, 1, end - 1) != b"\n":
            data = b"\n" + data  # a crash cut the last line: end it there, so this one is not glued to it
        rest = memoryview(data)
        while rest:  # a short write (disk full) is finished, or fails, rather than left half-done
            rest = rest[os.write(fd, rest) :]
    finally:
        os.close(fd)


def _replace_durably(path: Path, data: bytes) -> None:
    """Replace `path` with `data` whole: after a crash, even of the machine, it holds the
    old data or the new, never half or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself
    finally:
        os.close(directory)


class Ledger:
    def __init__(self, directory: Path, on_malformed: Callable[[MalformedMessage], None] = log_malformed):
        self.directory = directory
        self.on_malformed = on_malformed
        # Lines of the events file the last read could not read.
        self.skipped_lines = 0
        self._reported: list[int] = []

    def record_events(self, events: Iterable[CapacityEvent]) -> None:
        data = b"".join(_EVENT.dump_json(event) + b"\n" for event in events)
        if data:
            self.directory.mkdir(parents=True, exist_ok=True)
            _append(self.directory / EVENTS_FILE, data)

    def events(self, since_s: float = 0.0) -> list[CapacityEvent]:
        path = self.directory / EVENTS_FILE
        if not path.exists():
            return []
        events = []
        unreadable = []
        # Split at "\n" alone: str.splitlines would also split an event whose message holds U+2028 or U+0085.
        for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
            if not line:
                continue
            try:
                event = _EVENT.validate_json(line)
            except ValidationError:  # cut short by a crash (even inside a character), or not an event
                unreadable.append(number)
                continue
            if event.at_s >= since_s:
                events.append(event)
        self.skipped_lines = len(unreadable)
        # One report a read, and only when the unreadable lines changed: the capacity loop reads every tick.
        if unreadable and unreadable != self._reported:
            self._reported = unreadable
            where = f"{path.parent.name}/{path.name}"
            self.on_malformed(MalformedMessage("CapacityEvent", f"{where}: {_unreadable(unreadable)}"))
        return events

    def record_snapshot(self, snapshot: Snapshot) -> None:
        demand = tuple(_Demand(cloud=c, region=r, nodes=n) for (c, r), n in snapshot.demand.items())
        data = _SnapshotFile(at_s=snapshot.at_s, nodes=snapshot.nodes, demand=demand)
        _replace_durably(self.directory / NODES_FILE, data.model_dump_json(indent=1).encode())

    def snapshot(self) -> Snapshot | None:
        path = self.directory / NODES_FILE
        if not path.exists():
            return None
        try:
            data = _SnapshotFile.model_validate_json(path.read_bytes())
        except ValidationError:
            log.warning("%s does not hold a capacity snapshot; ignored", path)
            return None
        return Snapshot(data.at_s, data.nodes, {(d.cloud, d.region): d.nodes for d in data.demand})


def _unreadable(numbers: list[int]) -> str:
    """'2 unreadable lines (lines 3, 9)': how many, and which, the first MAX_LINES_NAMED of them."""
    named = ", ".join(map(str, numbers[:MAX_LINES_NAMED])) + (", ..." if len(numbers) > MAX_LINES_NAMED else "")
    if len(numbers) == 1:
        return f"1 unreadable line (line {named})"
    return f"{len(numbers)} unreadable lines (lines {named})"


def fleet_ledger(ledgers: Sequence[Ledger], since_s: float) -> tuple[Snapshot | None, list[CapacityEvent]]:
    """Every region's ledger read as one: the nodes and demand of all their snapshots
    (timed by the oldest), and their events since `since_s`, oldest first. Each ledger's
    `skipped_lines` then says how many lines of its events it could not read."""
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
