"""Spot availability traces: `{"metadata": {"gap_seconds": s}, "data": [...], "prices": [...]?}`.

One file is one zone, named `<zone>_<kind>.json` (e.g. `us-east-1a_v100_1.json`,
`us-central1-a_c3-88.json`). A value is the number of spot instances obtainable in
that zone at that step; in files whose values are only 0 and 1, 1 means "available"
with no stated limit (SpotHedge's loader, MaoZiming/spothedge_ae `utils/data_loader.py`,
reads its 9-zone set the same way: `LARGE_VALUE if d == 1 else 0`), so a binary set is
loaded with `UNLIMITED` in place of 1. See shared/data/README.md section 2.3 for how
these conventions were established. The optional `prices` (one per step, USD/h) is the
zone's spot price.

Files of one set share a time axis: a set is the files of one folder with one `<kind>`.
Where a set's files differ in length (the multi-node sets do), the set is cut to the
shortest file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

UNLIMITED = 1_000_000_000  # SpotHedge's LARGE_VALUE: "available" in a 0/1 trace
_AWS_ZONE = re.compile(r"^(?P<region>[a-z]+(?:-[a-z]+)+-\d+)(?P<letter>[a-z])$")
_GCP_ZONE = re.compile(r"^(?P<region>[a-z]+(?:-[a-z]+)*\d+)-(?P<letter>[a-z])$")


class TraceError(ValueError):
    """A trace file or set that cannot be replayed."""


@dataclass(frozen=True)
class ZoneTrace:
    path: Path
    cloud: str
    region: str
    zone: str
    kind: str  # the file name's tail: "v100_1", "k80_8", "intel_64", "c3-88"
    capacity: np.ndarray  # int64, spot instances obtainable per step (UNLIMITED for "available")
    prices: np.ndarray | None  # float64 USD/h per step, when the file has them


@dataclass(frozen=True)
class TraceSet:
    name: str  # folder name, plus the kind
    gap_s: float
    zones: tuple[ZoneTrace, ...]
    binary: bool  # the files held only 0 and 1

    @property
    def steps(self) -> int:
        return int(self.zones[0].capacity.shape[0])

    @property
    def kind(self) -> str:
        return self.zones[0].kind


def parse_zone(name: str) -> tuple[str, str, str, str]:
    """`us-east-1a_v100_1` → ("aws", "us-east-1", "us-east-1a", "v100_1")."""
    zone, _, kind = name.partition("_")
    if not kind:
        raise TraceError(f"{name}: expected <zone>_<kind>.json")
    if (match := _AWS_ZONE.match(zone)) is not None:
        return ("aws", match["region"], zone, kind)
    if (match := _GCP_ZONE.match(zone)) is not None:
        return ("gcp", match["region"], zone, kind)
    raise TraceError(f"{name}: {zone!r} is neither an AWS AZ name (us-east-1a) nor a GCP zone (us-central1-a)")


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and every `*.json` below each directory given, in name order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.rglob("*.json"))
            if not found:
                raise TraceError(f"{path}: no *.json trace files in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise TraceError(f"{path}: no such file or directory")
    return files


def load_zone(path: Path) -> tuple[ZoneTrace, float]:
    """One zone's trace and its gap in seconds."""
    try:
        raw = json.loads(path.read_text())
        gap = float(raw["metadata"]["gap_seconds"])
        data = np.asarray(raw["data"], dtype=np.int64)
        prices = np.asarray(raw["prices"], dtype=np.float64) if raw.get("prices") else None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TraceError(f"{path}: not a spot trace ({error!r})") from None
    if gap <= 0 or data.ndim != 1 or data.size == 0 or (data < 0).any():
        raise TraceError(f"{path}: needs gap_seconds > 0 and a non-empty list of counts >= 0")
    if prices is not None and (prices.shape != data.shape or not np.isfinite(prices).all() or (prices < 0).any()):
        raise TraceError(f"{path}: prices must be one non-negative number per data point")
    cloud, region, zone, kind = parse_zone(path.stem)
    return ZoneTrace(path, cloud, region, zone, kind, data, prices), gap


def load_sets(paths: Sequence[Path]) -> list[TraceSet]:
    """Group the files (and directories' files) into sets: one per folder and kind."""
    groups: dict[tuple[Path, str], list[tuple[ZoneTrace, float]]] = {}
    for path in expand(paths):
        trace, gap = load_zone(path)
        groups.setdefault((path.parent, trace.kind), []).append((trace, gap))
    return [_make_set(folder, kind, members) for (folder, kind), members in groups.items()]


def _make_set(folder: Path, kind: str, members: list[tuple[ZoneTrace, float]]) -> TraceSet:
    gaps = {gap for _, gap in members}
    if len(gaps) != 1:
        raise TraceError(f"{folder} ({kind}): files disagree on gap_seconds {sorted(gaps)}")
    zones = [t.zone for t, _ in members]
    if len(set(zones)) != len(zones):
        raise TraceError(f"{folder} ({kind}): a zone appears twice")
    steps = min(t.capacity.shape[0] for t, _ in members)
    binary = all(bool(np.isin(t.capacity, (0, 1)).all()) for t, _ in members)
    traces = []
    for trace, _ in sorted(members, key=lambda m: m[0].zone):
        capacity = trace.capacity[:steps]
        if binary:
            capacity = np.where(capacity > 0, UNLIMITED, 0)
        prices = trace.prices[:steps] if trace.prices is not None else None
        traces.append(ZoneTrace(trace.path, trace.cloud, trace.region, trace.zone, kind, capacity, prices))
    return TraceSet(f"{folder.name}/{kind}", gaps.pop(), tuple(traces), binary)
