"""What Meridian's processes tell each other, each message defined once.

Every message that crosses a process boundary is one of these models: strict types,
finite and bounded numbers, capped strings and lists, no unknown fields. The writer
builds the model; the reader validates with `parse`, which raises `MalformedMessage`
naming the fields at fault (never their values, which may carry a client's text). A
reader logs it, counts it in its metrics and drops the message: one bad message never
stops a loop.

- `RegionStatus`: a region's `GET /status` (deployments/region_control.py → the router).
- `ScalingView`: a model's policy's latest decision in a region, published in Ray's KV
  (autoscaler/live/serve_policy.py → the region's /status and the capacity loop, which
  read the sum over the region's models).
- `ReplicaReport`: what each LLM replica reports to Serve's autoscaler
  (deployments/region_server.py → autoscaler/live/serve_policy.py).
- `CapacityReport`: what a region's capacity loop could not place in the region, in
  its cluster's KV (capacity/live/capacity_loop.py → the region's /status → the global
  loop).
- `FleetFloor`: the global loop's replica floor for a region, sent to the region's
  control app and kept in its cluster's KV (autoscaler/live/global_loop.py →
  deployments/region_control.py → autoscaler/live/serve_policy.py).
- `RouterRegions`: the router's view of every region, its `GET /regions`
  (geo_router/live/app.py → `meridian status` and `meridian up`'s progress).
- `ReplicaPick`: a model app's replica router asking the app's affinity actor for a
  request's replica (geo_router/live/serve_replica_router.py, both ends).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Generous bounds: far beyond any real fleet, small enough that arithmetic on them is safe.
MAX_COUNT = 1_000_000
MAX_TOKENS = 10**15
MAX_SECONDS = 10**9
MAX_REASON = 500
MAX_NAME = 200
MAX_MODELS = 64
MAX_REPLICAS = 4096
# The leading prompt blocks a prompt is keyed by (routing_core's prefix_blocks).
MAX_PROMPT_BLOCKS = 64
# A region's /status with every field at its cap is well under this.
MAX_MESSAGE_BYTES = 256 * 1024

Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(ge=0.0, le=MAX_SECONDS)]
# Unix time, up to the year 5138.
Timestamp = Annotated[float, Field(ge=0.0, le=1e11)]
Tokens = Annotated[float, Field(ge=0.0, le=MAX_TOKENS)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Reason = Annotated[str, Field(max_length=MAX_REASON)]


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class MalformedMessage(ValueError):
    """A message that is not what its contract says; the text names fields, not values."""

    def __init__(self, contract: str, reason: str):
        super().__init__(f"malformed {contract}: {reason}")
        self.contract = contract


Message = TypeVar("Message", bound=Contract)


def parse(contract: type[Message], raw: bytes | str | Mapping[str, Any]) -> Message:
    """The message `raw` (JSON text or already decoded) as `contract`, or MalformedMessage."""
    name = contract.__name__
    try:
        if isinstance(raw, bytes | str):
            if len(raw) > MAX_MESSAGE_BYTES:
                raise MalformedMessage(name, f"{len(raw)} bytes, over the {MAX_MESSAGE_BYTES}-byte cap")
            return contract.model_validate_json(raw, strict=False)
        return contract.model_validate(raw)
    except ValidationError as error:
        where = sorted({".".join(str(part) for part in item["loc"]) or "(message)" for item in error.errors()})
        raise MalformedMessage(name, f"bad {', '.join(where[:12])}") from None
    except RecursionError:
        raise MalformedMessage(name, "nested too deeply") from None


class EngineLoad(Contract):
    """One replica's engine, or a region's replicas summed (KV use: the fullest)."""

    running: Count = 0
    waiting: Count = 0
    kv_cache_usage: Fraction = 0.0
    # In a region's `per_replica`: the model the replica serves.
    model: Name | None = None


class ReplicaCounts(Contract):
    ready: Count = 0
    # Replicas the autoscaler wants that are not serving yet.
    starting: Count = 0


class ScalingView(Contract):
    # What the region runs: its policy's own target, raised to the global loop's floor.
    target: Count
    # The policy's target before the floor: what the global loop plans floors from, so a
    # floor it set never feeds back into the next one.
    own_target: Count
    reason: Reason
    ready: Count
    starting: Count
    cold_start_s: Seconds
    cold_start_measured: bool
    min_replicas: Count
    max_replicas: Count
    # Arrivals over the recent window, for where the fleet keeps replicas warm.
    recent_requests: Count
    at: Timestamp


class CapacityReport(Contract):
    """A region's capacity loop, after its last placement: the replicas of its target it
    has no node for and cannot get one for in the region (stockouts, quota), and why."""

    unplaced_replicas: Count
    reason: Reason
    at: Timestamp


class FleetFloor(Contract):
    replicas: Count
    reason: Reason


class RegionStatus(Contract):
    region: Name
    models: list[Name] = Field(max_length=MAX_MODELS)
    replicas: ReplicaCounts
    # None for a region with a fixed replica count.
    autoscaling: ScalingView | None = None
    engine: EngineLoad
    per_replica: list[EngineLoad] = Field(default_factory=list, max_length=MAX_REPLICAS)
    # None until the region's capacity loop has reported.
    capacity: CapacityReport | None = None
    # The global loop's floor for the region, if it set one.
    floor: FleetFloor | None = None


# Stands for "nothing observed in this interval": Serve's custom metrics are floats.
NOT_OBSERVED = -1.0
Percentile = Annotated[float, Field(ge=NOT_OBSERVED, le=MAX_SECONDS)]


class ReplicaReport(Contract):
    """Cumulative counters (the controller differences them whatever its sampling), the
    engine's load now, and latency percentiles over the interval since the last report."""

    running: float = Field(default=0.0, ge=0, le=MAX_COUNT)
    waiting: float = Field(default=0.0, ge=0, le=MAX_COUNT)
    kv_cache_usage: Fraction = 0.0
    arrived_total: Tokens = 0.0
    prompt_tokens_total: Tokens = 0.0
    output_tokens_total: Tokens = 0.0
    # Requests that reached their first token: the engine counts a prompt's tokens then.
    first_tokens_total: Tokens = 0.0
    ttft_p95_s: Percentile = NOT_OBSERVED
    itl_p95_s: Percentile = NOT_OBSERVED


class RouterRegion(Contract):
    """One region as the router sees it: health, breaker, load and its last /status."""

    name: Name
    healthy: bool
    breaker_open: bool
    ready_replicas: Count
    starting_replicas: Count
    models: list[Name] = Field(max_length=MAX_MODELS)
    in_flight: Count
    # None until the region has answered a poll.
    status: RegionStatus | None = None
    last_error: Reason | None = None
    last_poll_age_s: Seconds | None = None


class RouterRegions(Contract):
    regions: list[RouterRegion] = Field(max_length=MAX_REPLICAS)


class ReplicaPick(Contract):
    """One request's pick: the model app's replicas now, those that may take the request
    with their requests (running and waiting), and the prompt's block keys."""

    replicas: list[Name] = Field(max_length=MAX_REPLICAS)
    requests: dict[Name, Count] = Field(min_length=1, max_length=MAX_REPLICAS)
    blocks: list[Annotated[int, Field(ge=0, lt=2**64)]] = Field(max_length=MAX_PROMPT_BLOCKS)
