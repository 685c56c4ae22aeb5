"""What a simulated capacity policy sees and does at each step of a spot trace replay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from capacity.model import CapacityEvent, Market


@dataclass(frozen=True)
class SimZone:
    cloud: str
    region: str
    zone: str


@dataclass(frozen=True)
class SimNode:
    id: str
    zone: int  # index into SimView.zones
    market: Market
    launched_s: float
    ready_s: float  # when it can serve; later than `now_s` while provisioning


@dataclass(frozen=True)
class Launch:
    zone: int
    market: Market


@dataclass(frozen=True)
class Terminate:
    node_id: str
    drain: bool = True  # a running node stops serving now and is billed for the drain time


@dataclass(frozen=True)
class SimView:
    now_s: float
    target: int
    zones: tuple[SimZone, ...]
    on_demand_usd_per_h: tuple[float, ...]  # per zone
    spot_usd_per_h: tuple[float, ...]  # per zone, this step
    nodes: tuple[SimNode, ...]  # held: provisioning or ready (not draining)
    events: tuple[CapacityEvent, ...]  # stockouts and preemptions since the policy's last call

    def ready(self, node: SimNode) -> bool:
        return node.ready_s <= self.now_s


@dataclass(frozen=True)
class SimActions:
    launches: tuple[Launch, ...] = ()
    terminations: tuple[Terminate, ...] = ()


class SimPolicy(Protocol):
    name: str

    def step(self, view: SimView) -> SimActions:
        """Called at every trace step, and again in the same step after any launch stocked out."""
        ...
