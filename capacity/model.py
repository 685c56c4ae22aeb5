"""The capacity vocabulary shared by the catalog, placement, providers and reports.

Plain frozen data. A provider (local Ray nodes, AWS, GCP) turns a `Placement` into
`Node`s or raises a typed `CapacityError`; everything it observes about the cloud
(stockouts, quota refusals, spot preemption notices) comes out as `CapacityEvent`s,
which placement reads to back off and fall back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Market(StrEnum):
    SPOT = "spot"
    ON_DEMAND = "on_demand"


class NodeState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    # No new requests are routed to it; it is released once its work is done.
    DRAINING = "draining"
    TERMINATED = "terminated"


class EventKind(StrEnum):
    STOCKOUT = "stockout"  # the zone has no capacity of that type in that market
    QUOTA_EXCEEDED = "quota_exceeded"  # the account's limit, not the cloud's
    PREEMPTION_NOTICE = "preemption_notice"  # spot node will be taken shortly
    PREEMPTED = "preempted"  # spot node is gone
    LAUNCHED = "launched"
    TERMINATED = "terminated"
    # Missing from its region's Ray cluster for `capacity.join_timeout_s` (its boot
    # failed, or Ray on it died): released, and bought again.
    JOIN_FAILED = "join_failed"


@dataclass(frozen=True)
class Accelerator:
    name: str  # e.g. "A100", "H100", "L4"; "cpu" for CPU-only nodes
    count: int
    memory_gib: float


@dataclass(frozen=True)
class Placement:
    """Where and how to buy one node."""

    cloud: str  # "aws", "gcp", "local"
    region: str  # the cloud's own region name, e.g. "us-east-1"
    zone: str  # the cloud's zone name, e.g. "us-east-1a" (AWS AZ name, not AZ id)
    instance_type: str
    market: Market


@dataclass(frozen=True)
class Node:
    id: str  # the provider's instance id
    placement: Placement
    state: NodeState
    launched_at_s: float  # seconds since the epoch
    # The value of the node's `meridian.io/node` Ray label, by which the capacity loop
    # finds it among its cluster's nodes; None when the provider cannot tell.
    ray_label: str | None = None


@dataclass(frozen=True)
class CapacityEvent:
    kind: EventKind
    placement: Placement
    at_s: float
    node_id: str | None = None
    message: str = ""


class CapacityError(Exception):
    """An acquisition the cloud refused; `event` says why in typed form."""

    def __init__(self, event: CapacityEvent) -> None:
        super().__init__(f"{event.kind}: {event.placement.cloud}/{event.placement.zone} {event.message}".rstrip())
        self.event = event


class ProviderError(RuntimeError):
    """A cloud call that failed for a reason other than capacity (credentials, permissions,
    a setting the cloud does not know, an endpoint that does not answer). The message
    names the provider's cloud region and the call, and carries no traceback."""

    def __init__(self, where: str, call: str, reason: str) -> None:
        super().__init__(f"{where}: {call} failed: {reason}")


class NodeBusy(RuntimeError):
    """A release the provider refused because the node still runs work (Ray would not
    drain it): the node stays, and the caller may release another of the same kind."""


class Provider(Protocol):
    cloud: str

    def acquire(self, placement: Placement, count: int = 1) -> list[Node]:
        """Start `count` nodes; raises CapacityError (stockout, quota) if none can start."""
        ...

    def release(self, node_id: str) -> None:
        """Terminate a node this provider owns; unknown or foreign ids raise KeyError,
        a node that still runs work raises NodeBusy."""
        ...

    def nodes(self) -> list[Node]:
        """The nodes this provider owns (tagged as Meridian's), in any state but terminated."""
        ...

    def events(self) -> list[CapacityEvent]:
        """Events observed since the last call (preemption notices, terminations)."""
        ...
