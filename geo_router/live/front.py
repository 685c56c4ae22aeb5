"""The router's compiled front (routing_core/src/front): an HTTP server in the router's
process, on the router's port. It serves the inference requests it can whole (the
decision, with the same compiled scorer and the same routing memory, failover, the
relay, metrics, the access log and spans) and hands everything else to this Python app,
bound on loopback (`back`): errors, the models list and the operational endpoints. API
keys' limits are one table (`RateLimits`) that both charge.

This app stays the control plane. It polls regions and keeps their breakers, and tells
the front what it sees (`FrontView.push`). The front tells it back what only requests
see (`FrontEvents`), and asks it for what only Python has: a model's tokenizer, a GeoIP
lookup. The front's metrics join this app's own when /metrics is scraped; its access-log
lines and spans go out through this app's logging and tracer.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.trace import Tracer
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Receive, Scope, Send

import routing_core
from geo_router.live.admission import Admission
from geo_router.live.locate import ClientLocator
from geo_router.live.metrics import LATENCY_BUCKETS_S
from geo_router.live.middleware import access_log
from geo_router.live.prompt_tokens import PromptTokens
from geo_router.live.regions import Region, RegionTable
from geo_router.live.tracing import export_front_span
from geo_router.policy.ratelimit import RateLimits
from geo_router.policy.scoring import NETWORK, PROFILE_FIELDS, RoutingMemory, RttCorrector
from meridian_core.replica_model import PROFILES
from meridian_core.spec import PlatformSpec, model_route

log = logging.getLogger(__name__)

Front = routing_core.Front
# A tokenizer as the front reads one: byte-level BPE (routing_core/src/front/tokens.rs).
FrontTokenizer = routing_core.FrontTokenizer

# The client's address, as the front saw it, on what it hands this app.
PEER_HEADER = b"x-meridian-peer"
# The front's threads. One: a request's work never hops between threads, which cost more
# than a second thread bought (router_overhead.py's throughput load: 1.11x vllm-router's
# requests/s with one, 0.85x with two). A call into Python (a tokenizer, a GeoIP lookup)
# holds it meanwhile.
FRONT_THREADS = 1
# How long an idle client connection stays open. Longer than clients' own pools keep one
# (httpx 5 s, as the openai client uses, aiohttp 15 s) and than load balancers' idle
# timeouts (60 s): at uvicorn's default of 5 s a client reusing a connection just as the
# router closed it gets a reset, not an answer. nginx's default is 75 s.
# The front waits as long for a request's headers, an idle connection's next one included.
KEEP_ALIVE_S = 75
# How often the front's access-log lines are written.
ACCESS_LOG_INTERVAL_S = 0.1


def front_config(spec: PlatformSpec, back_port: int, table: RegionTable, admission: Admission, traced: bool) -> dict:
    """What the front is started with: the spec's router settings, the regions' tokens and
    the API keys' digests, what this app can count, and where this app is."""
    router = spec.router
    tokenizers = admission.prompt_counter
    return {
        "listen": f"{router.host}:{router.port}",
        "back": f"127.0.0.1:{back_port}",
        "models": [
            {
                "id": m.id,
                "route": model_route(m.id),
                "max_model_len": m.max_model_len,
                "tokenizer": tokenizers.has_tokenizer(m.id),
                "tokenizer_json": str(path) if (path := tokenizers.tokenizer_file(m.id)) else None,
            }
            for m in spec.models
        ],
        "regions": [
            {
                "name": r.name,
                "location": r.location.model_dump(),
                "endpoint": spec.region_endpoint(r),
                "token": table.regions[r.name].token,
                "profile": PROFILES[r.profile].model_dump(include=PROFILE_FIELDS),
            }
            for r in spec.regions
        ],
        "keys": [{"name": k.name, "sha256": k.sha256} for k in admission.keyring.keys],
        "traced": traced,
        "locate": {
            "order": list(router.locate.order),
            "default": router.default_location.model_dump(),
            "geoip": router.locate.geoip_database is not None,
            "trusted_proxy_hops": router.locate.trusted_proxy_hops,
        },
        "network": list(NETWORK),
        "scoring": router.scoring.model_dump(),
        "max_body_bytes": router.max_body_bytes,
        "region_ca_file": str(router.region_ca_file) if router.region_ca_file else None,
        "header_timeout_s": KEEP_ALIVE_S,
        "first_byte_timeout_s": router.first_byte_timeout_s,
        "output_token_timeout_s": router.output_token_timeout_s,
        "upstream_timeout_s": router.upstream_timeout_s,
        "retry_budget_ratio": router.retry_budget_ratio,
        "retry_budget_burst": float(router.retry_budget_burst),
        "latency_buckets": [floatToGoString(b) for b in LATENCY_BUCKETS_S],
        "worker_threads": FRONT_THREADS,
    }


def served_by_front(spec: PlatformSpec) -> str | None:
    """Why the front cannot serve `spec`'s router, or None if it can."""
    by_address = [r.name for r in spec.regions if _tls_at_an_address(spec.region_endpoint(r))]
    if by_address:
        return (
            f"regions reached over TLS at an IP address ({', '.join(by_address)}): the front "
            "verifies a region's certificate by its DNS name only (rustls 0.20)"
        )
    return None


def _tls_at_an_address(endpoint: str) -> bool:
    url = urllib.parse.urlsplit(endpoint)
    try:
        ipaddress.ip_address(url.hostname or "")
    except ValueError:
        return False
    return url.scheme == "https"


@dataclass
class FrontEvents:
    """What the front tells this app, and asks of it (routing_core's `Events`), from the
    front's threads: what changes a region is done on this app's event loop, which owns
    the region table; the tokenizers and the GeoIP reader are safe from any thread."""

    table: RegionTable
    view: FrontView
    tokenizers: PromptTokens
    locator: ClientLocator
    loop: asyncio.AbstractEventLoop

    def region_failed(self, name: str, detail: str) -> None:
        self.loop.call_soon_threadsafe(functools.partial(self.table.regions[name].mark_down, detail, by_request=True))

    def region_answered(self, name: str) -> None:
        self.loop.call_soon_threadsafe(self.table.regions[name].mark_answered)

    def prompt_tokens(self, model: str, texts: list[str]) -> int | None:
        return self.tokenizers.count_texts(model, texts)

    def locate_ip(self, ip: str) -> tuple[float, float] | None:
        found = self.locator.from_ip(ip)
        return (found.lat, found.lon) if found is not None else None

    def log(self, level: str, message: str) -> None:
        log.log(logging.WARNING if level == "warning" else logging.INFO, message)


class FrontView:
    """Tells the front each region's state whenever it changes here."""

    def __init__(self, table: RegionTable):
        self.table = table
        self.front: Front | None = None

    def push(self, region: Region) -> None:
        if self.front is None:
            return
        now = time.monotonic()
        models = {}
        for model in region.models:
            load = region.model_load(model)
            cold_ms = region.cold_start_remaining_ms(now, load.ready_replicas)
            models[model] = (load.ready_replicas, load.running, load.waiting, load.kv_cache_usage, cold_ms)
        self.front.set_region(
            region.name, region.healthy, region.breaker.is_open, region.may_start, models, region.in_flight
        )

    def push_all(self) -> None:
        for region in self.table.regions.values():
            self.push(region)


def start_front(
    config: dict,
    events: FrontEvents,
    memory: RoutingMemory,
    corrector: RttCorrector,
    limits: RateLimits,
) -> Front:
    """Start the front on the router's port; an OSError if it cannot bind it."""
    front = routing_core.Front(json.dumps(config), events, memory, corrector, limits, time.monotonic())
    front.set_access_log(access_log.isEnabledFor(logging.INFO))
    natively = set(front.counts_tokens_of())
    for model in config["models"]:
        if model["tokenizer"] and model["id"] not in natively:
            log.info("%s: the compiled front asks this app's tokenizer for its prompts' tokens", model["id"])
    events.view.front = front
    events.view.push_all()
    return front


async def write_front_records(front: Front, tracer: Tracer | None, on_dropped: Callable[[str, int], None]) -> None:
    """Write the front's access-log lines through this app's logging and export its spans
    through this app's tracer, as they come; the front makes lines only while the access
    log is on. `on_dropped(kind, count)` hears of those the front had to drop."""
    while True:
        front.set_access_log(access_log.isEnabledFor(logging.INFO))
        await asyncio.sleep(ACCESS_LOG_INTERVAL_S)
        write_front_records_once(front, tracer, on_dropped)


def write_front_records_once(front: Front, tracer: Tracer | None, on_dropped: Callable[[str, int], None]) -> None:
    lines, dropped_lines = front.take_access_log()
    for line in lines:
        access_log.info(line)
    spans, dropped_spans = front.take_spans()
    if tracer is not None:
        for span in spans:
            export_front_span(tracer, span)
    for kind, dropped in (("access_log", dropped_lines), ("span", dropped_spans)):
        if dropped:
            on_dropped(kind, dropped)


class FrontPeer:
    """On what the front hands this app, the client is the one the front saw: its
    address, sent in `x-meridian-peer`, replaces the loopback peer."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_loopback(scope.get("client")):
            headers = [(k, v) for k, v in scope["headers"] if k != PEER_HEADER]
            peer = next((v for k, v in scope["headers"] if k == PEER_HEADER), None)
            if peer is not None:
                scope = {**scope, "headers": headers, "client": (peer.decode("latin-1"), 0)}
        await self.app(scope, receive, send)


def _is_loopback(client: tuple[str, int] | None) -> bool:
    try:
        return client is not None and ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False
