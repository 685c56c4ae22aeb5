"""The router's live view of every region, refreshed by polling each region's /status.

A region is healthy while its circuit breaker is closed and its last poll reported a
ready replica, or an autoscaler that is starting one (or will, for the first request
to a region scaled to zero). Failed polls and failed requests open the breaker (at once,
with the default threshold of 1), so traffic moves before the next poll. A good poll
closes a breaker polls opened once its open time is over; one that failed requests
opened closes only when an inference probe (one tiny completion, sent once the open time
is over and the region reports a ready replica, or is scaled to zero and starts one for
it) or a request is answered (geo_router/live/breaker.py). An open breaker puts a
region last, not out: one that last reported a ready replica is still tried when every
healthy region has failed a request before its first byte (`RegionTable.reserve`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import httpx

from geo_router.live.breaker import CircuitBreaker
from geo_router.policy.scoring import RegionLoad
from meridian_core.contracts import (
    MAX_MESSAGE_BYTES,
    MAX_REASON,
    MalformedMessage,
    RegionStatus,
    RouterRegion,
    parse,
)
from meridian_core.geo import LatLon, haversine_km
from meridian_core.spec import model_route

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelLoad:
    """The replicas of one model in a region, and their engines' load."""

    ready_replicas: int
    running: int
    waiting: int
    kv_cache_usage: float


def model_loads(status: RegionStatus) -> dict[str, ModelLoad]:
    """Per model the region serves, its replicas' load: a region's embedding replicas are
    no slots for its chat requests. Empty when a replica does not say which model it
    serves (an older region), or the replicas listed are not the ready ones; then the
    region's totals stand for every model."""
    listed = status.per_replica
    if not listed or len(listed) != status.replicas.ready or any(replica.model is None for replica in listed):
        return {}
    loads = {model: ModelLoad(0, 0, 0, 0.0) for model in status.models}
    for replica in listed:
        load = loads.get(replica.model, ModelLoad(0, 0, 0, 0.0))
        loads[replica.model] = ModelLoad(
            load.ready_replicas + 1,
            load.running + replica.running,
            load.waiting + replica.waiting,
            max(load.kv_cache_usage, replica.kv_cache_usage),
        )
    return loads


@dataclass
class Region:
    name: str
    location: LatLon
    endpoint: str  # base URL of the region's control app (/status); each model's app under it
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    # The region's token, which its apps require of every request; None if it has none.
    token: str | None = field(default=None, repr=False)
    ready_replicas: int = 0
    models: frozenset[str] = frozenset()
    last_status: RegionStatus | None = None
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    per_model: dict[str, ModelLoad] = field(default_factory=dict)
    last_error: str | None = None
    last_poll_at: float = 0.0
    last_answered_at: float = -math.inf
    in_flight: int = 0
    # Set when the region has an autoscaler: then a region with no ready replica is
    # starting one, or is scaled to zero and starts one for the first request.
    autoscaled: bool = False
    starting_replicas: int = 0
    # The region's capacity loop cannot place replicas it wants (stockout, quota): with
    # none ready, the region is not starting one, and nothing is held for it; the
    # global loop's floors raise the regions its traffic goes to instead.
    out_of_capacity: bool = False
    cold_start_s: float = 0.0
    cold_since: float | None = None
    # Told the region's name each time its breaker goes from closed to open.
    on_breaker_trip: Callable[[str], None] = field(default=lambda _: None, repr=False)
    # Told the region whenever its state changes: a poll, a failure, an answer.
    on_change: Callable[[Region], None] = field(default=lambda _: None, repr=False)
    # Requests the router's compiled front has in flight here (geo_router/live/front.py).
    in_flight_elsewhere: Callable[[], int] = field(default=lambda: 0, repr=False)

    @property
    def all_in_flight(self) -> int:
        return self.in_flight + self.in_flight_elsewhere()

    def openai_url(self, model: str, path: str) -> str:
        """Where the region's replicas of `model` answer the OpenAI API's `path`."""
        return f"{self.endpoint}{model_route(model)}/v1/{path}"

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def healthy(self) -> bool:
        return not self.breaker.is_open and (self.ready_replicas > 0 or self.may_start)

    @property
    def may_start(self) -> bool:
        """Without a ready replica, whether a request here is served once one starts."""
        return self.autoscaled and not self.out_of_capacity

    def cold_start_remaining_ms(self, now: float, ready_replicas: int) -> float:
        """How long a request sent now waits for a replica of its model to be ready, given
        how many of that model's are."""
        if ready_replicas > 0:
            return 0.0
        if self.cold_since is None:  # scaled to zero: the request itself starts one
            return self.cold_start_s * 1000
        # A start running late is still some way off, not done.
        return max(0.1 * self.cold_start_s, self.cold_start_s - (now - self.cold_since)) * 1000

    def can_serve(self, model: str) -> bool:
        return self.healthy and model in self.models

    def model_load(self, model: str | None) -> ModelLoad:
        """`model`'s replicas and their load; the region's totals when it does not say."""
        own = self.per_model.get(model) if model is not None else None
        return own or ModelLoad(self.ready_replicas, self.running, self.waiting, self.kv_cache_usage)

    def load(self, rtt_correction_ms: float = 0.0, model: str | None = None) -> RegionLoad:
        """The region as a request for `model` sees it: that model's replicas and their load."""
        own = self.model_load(model)
        return RegionLoad(
            self.name,
            self.location,
            own.ready_replicas,
            running=own.running,
            waiting=own.waiting,
            in_flight=self.all_in_flight,
            kv_cache_usage=own.kv_cache_usage,
            rtt_correction_ms=rtt_correction_ms,
            cold_start_ms=self.cold_start_remaining_ms(time.monotonic(), own.ready_replicas),
        )

    def mark_down(self, reason: str, by_request: bool = False) -> None:
        """`reason` is the router's own words (never a region's body): it is logged and shown."""
        was_open = self.breaker.is_open
        if not was_open:
            log.warning("region %s failed: %s", self.name, reason)
        self.breaker.record_failure(time.monotonic(), by_request=by_request)
        if self.breaker.is_open and not was_open:
            self.on_breaker_trip(self.name)
        self.last_error = reason
        self.on_change(self)

    def mark_answered(self) -> None:
        self.last_answered_at = time.monotonic()
        self.breaker.record_inference_success(self.last_answered_at)
        self.on_change(self)

    def poll_timed_out(self, window_s: float) -> None:
        """A slow poll is no evidence against a region that has just answered requests:
        under load the lag is often the router's own busy event loop."""
        if time.monotonic() - self.last_answered_at < window_s:
            self.last_error = "status poll timed out while the region was answering requests"
            return
        self.mark_down("status poll timed out")

    def apply_status(self, status: RegionStatus) -> None:
        self.ready_replicas = status.replicas.ready
        self.models = frozenset(status.models)
        self.running = status.engine.running
        self.waiting = status.engine.waiting
        self.kv_cache_usage = status.engine.kv_cache_usage
        self.per_model = model_loads(status)
        scaling = status.autoscaling
        self.autoscaled = scaling is not None
        self.cold_start_s = scaling.cold_start_s if scaling else 0.0
        self.starting_replicas = status.replicas.starting
        self.out_of_capacity = status.capacity is not None and status.capacity.unplaced_replicas > 0
        if self.ready_replicas > 0 or self.starting_replicas == 0:
            self.cold_since = None
        elif self.cold_since is None:
            self.cold_since = time.monotonic()
        self.last_status = status
        self.last_error = None
        self.breaker.record_probe_success(time.monotonic())
        self.on_change(self)

    def describe(self) -> RouterRegion:
        """What `GET /regions` says of this region; its endpoint stays inside the router."""
        return RouterRegion(
            name=self.name,
            healthy=self.healthy,
            breaker_open=self.breaker.is_open,
            ready_replicas=self.ready_replicas,
            starting_replicas=self.starting_replicas,
            models=sorted(self.models),
            in_flight=self.all_in_flight,
            status=self.last_status,
            last_error=self.last_error[:MAX_REASON] if self.last_error else None,
            last_poll_age_s=round(time.monotonic() - self.last_poll_at, 3) if self.last_poll_at else None,
        )


class RegionTable:
    def __init__(
        self,
        regions: list[Region],
        client: httpx.AsyncClient,
        timeout_s: float,
        interval_s: float,
        on_malformed: Callable[[MalformedMessage], None] = lambda _: None,
        on_poll_error: Callable[[str], None] = lambda _: None,
        probe_models: Sequence[str] = (),
        probe_timeout_s: float = 30.0,
    ):
        self.regions = {r.name: r for r in regions}
        self._client = client
        self._timeout_s = timeout_s
        self._interval_s = interval_s
        self._on_malformed = on_malformed
        self._on_poll_error = on_poll_error
        self.last_round_at = time.monotonic()
        # Generating models, in the spec's order: what an inference probe asks for.
        self._probe_models = list(probe_models)
        self._probe_timeout_s = probe_timeout_s
        self._probes: dict[str, asyncio.Task[None]] = {}

    def servable(self, model: str) -> tuple[list[Region], bool]:
        """Regions to route `model` to, and whether this is panic routing: when every
        breaker is open, the regions whose last status had ready replicas are tried
        anyway (a breaker may be wrong; a blanket 503 surely is)."""
        healthy = [r for r in self.regions.values() if r.can_serve(model)]
        if healthy:
            return healthy, False
        return [r for r in self.regions.values() if (r.ready_replicas > 0 or r.may_start) and model in r.models], True

    def reserve(self, model: str, chosen: Collection[str], client: LatLon) -> list[Region]:
        """Regions an open breaker keeps out of `chosen` whose last status had a ready
        replica of `model`, nearest `client` first: tried only once every chosen region has
        failed before a first byte. A breaker may be wrong (one slow poll of an idle region
        on a busy machine opens one); a 503 surely is."""
        held_back = [
            r
            for r in self.regions.values()
            if r.name not in chosen and r.breaker.is_open and model in r.models and r.model_load(model).ready_replicas
        ]
        return sorted(held_back, key=lambda r: (haversine_km(client, r.location), r.name))

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll_guarded(region) for region in self.regions.values()))
        self.last_round_at = time.monotonic()

    async def aclose(self) -> None:
        for probe in self._probes.values():
            probe.cancel()
        await asyncio.gather(*self._probes.values(), return_exceptions=True)

    def _maybe_probe_inference(self, region: Region) -> None:
        """A breaker failed requests opened closes only on evidence that inference works:
        once it is half-open, one tiny completion is sent (in the background: a slow
        answer must not hold the poll) to a model the region reports a ready replica of,
        or, scaled to zero with none starting, to one it starts a replica of for the probe
        as for a request. While a replica is starting, a probe would only wait for it in
        the region's queue: held at Serve's fallback proxy and given up, one left Ray
        Serve's HAProxy 2.8 spinning a core until the region had a replica again, which on
        a 2-core machine starved that replica's start (tests/e2e/test_clouds.py)."""
        if region.name in self._probes or not region.breaker.opened_by_requests:
            return
        if not region.breaker.half_open(time.monotonic()):
            return
        wakes = region.may_start and not region.starting_replicas
        model = next(
            (m for m in self._probe_models if m in region.models and (region.model_load(m).ready_replicas or wakes)),
            None,
        )
        if model is not None:
            self._probes[region.name] = asyncio.create_task(self._probe_inference(region, model))

    async def _probe_inference(self, region: Region, model: str) -> None:
        body = {"model": model, "prompt": "ping", "max_tokens": 1, "temperature": 0}
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                response = await self._client.post(
                    region.openai_url(model, "completions"), json=body, headers=region.auth_headers()
                )
            if response.status_code == 200:
                region.mark_answered()
                log.info("region %s answered an inference probe", region.name)
            else:
                region.mark_down(f"inference probe answered HTTP {response.status_code}", by_request=True)
        except Exception as error:  # a probe that fails for any reason is a failed probe
            region.mark_down(f"inference probe failed: {type(error).__name__}", by_request=True)
        finally:
            self._probes.pop(region.name, None)

    def poll_is_stale(self, now: float) -> bool:
        """Whether the poll has stopped going round: region state would then be frozen."""
        return now - self.last_round_at > 5 * (self._interval_s + self._timeout_s)

    async def _poll_guarded(self, region: Region) -> None:
        """One region's poll; whatever goes wrong marks that region down, never the poll."""
        try:
            await self._poll(region)
        except Exception as error:
            self._on_poll_error(region.name)
            log.error("status poll of %s failed unexpectedly (%s)", region.name, type(error).__name__)
            region.mark_down(f"status poll failed: {type(error).__name__}")

    async def poll_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.poll_once()

    async def _poll(self, region: Region) -> None:
        region.last_poll_at = time.monotonic()
        try:
            # A total deadline: httpx's own timeouts are per read, and a region that
            # trickles bytes must not hold the poll (or its breaker) open.
            async with asyncio.timeout(self._timeout_s):
                status_code, body = await self._get_status(region)
        except (httpx.TimeoutException, TimeoutError):
            region.poll_timed_out(window_s=self._interval_s + self._timeout_s)
            return
        except httpx.HTTPError as error:
            region.mark_down(f"status poll failed: {type(error).__name__}")
            return
        if status_code != 200:
            region.mark_down(f"status poll answered HTTP {status_code}")
            return
        try:
            status = parse(RegionStatus, body)
        except MalformedMessage as error:
            self._on_malformed(error)
            region.mark_down(f"status poll: {error}")
            return
        region.apply_status(status)
        self._maybe_probe_inference(region)

    async def _get_status(self, region: Region) -> tuple[int, bytes]:
        """The status code and at most one byte over the contract's cap of the body."""
        async with self._client.stream("GET", f"{region.endpoint}/status", headers=region.auth_headers()) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_MESSAGE_BYTES:
                    break
            return response.status_code, bytes(body)
