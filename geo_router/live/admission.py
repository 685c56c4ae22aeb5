"""What the router decides about one inference request before any region sees it: whose
it is, whether it may go now, how many tokens it may use, and the regions to try, best
first. No I/O but the prompt's tokenizer: whatever carries the request (the router's own
HTTP server, or another front end asking the router) calls the same decision.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.responses import JSONResponse

from geo_router.live.auth import ApiKey, KeyRing, key_digest_from
from geo_router.live.errors import error_response
from geo_router.live.locate import ClientLocator, open_geoip
from geo_router.live.metrics import RouterMetrics
from geo_router.live.prompt import BLOCK_BYTES, CHARS_PER_TOKEN, prefix_blocks, prompt_text
from geo_router.live.prompt_tokens import PromptTokens
from geo_router.live.regions import Region, RegionTable
from geo_router.live.requests import InferenceRequest, completion_cap, parse_inference_request, session_key
from geo_router.live.usage import asks_for_usage, body_asking_for_usage
from geo_router.policy.ratelimit import RateLimits
from geo_router.policy.scoring import RequestFacts, RouteDecision, RoutingMemory, RttCorrector, choose
from meridian_core.geo import LatLon
from meridian_core.replica_model import PROFILES
from meridian_core.spec import PlatformSpec


@dataclass(frozen=True)
class Admitted:
    """A request that may go, and where."""

    request: InferenceRequest
    facts: RequestFacts
    decision: RouteDecision
    ranked: list[Region]  # the scorer's order, then the reserve regions
    reason: str  # why the first region: the scorer's reason, or "panic"
    on_usage: Callable[[int], None] | None  # settles the key's token bucket on the tokens used
    hide_usage: bool  # usage was asked for on the client's behalf; strip it from the stream


class Admission:
    def __init__(
        self,
        spec: PlatformSpec,
        table: RegionTable,
        metrics: RouterMetrics,
        memory: RoutingMemory,
        corrector: RttCorrector,
    ):
        settings = spec.router
        self._settings = settings
        self._table = table
        self._metrics = metrics
        self._memory = memory
        self.corrector = corrector
        self._known_models = {m.id for m in spec.models}
        self._max_model_len = {m.id: m.max_model_len for m in spec.models}
        self.prompt_counter = PromptTokens(spec.models)
        self._profiles = {r.name: PROFILES[r.profile] for r in spec.regions}
        locate = settings.locate
        self.locator = ClientLocator(
            locate.order,
            settings.default_location.latlon,
            geoip=open_geoip(locate.geoip_database) if locate.geoip_database else None,
            trusted_proxy_hops=locate.trusted_proxy_hops,
        )
        self.keyring = KeyRing(
            [
                ApiKey(k.name, key_digest_from(k.sha256, k.key_env), k.requests_per_minute, k.tokens_per_minute)
                for k in settings.auth.keys
            ]
        )
        self.limits = RateLimits(
            [(key.name, key.requests_per_minute, key.tokens_per_minute) for key in self.keyring.keys]
        )

    @property
    def known_models(self) -> set[str]:
        return self._known_models

    def authenticate(self, authorization: str | None) -> ApiKey | JSONResponse | None:
        """The caller's key, None when the router is open, or the 401 to answer with."""
        if not self.keyring.enabled:
            return None
        key = self.keyring.identify(authorization)
        if key is None:
            return error_response(
                401,
                "missing or invalid API key; send it as 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return key

    def parse(
        self, path: str, body: bytes, headers: Mapping[str, str], client_host: str | None
    ) -> tuple[InferenceRequest, str | None, LatLon]:
        """The request, its session key and where its client is; raises InvalidRequest."""
        parsed = parse_inference_request(path, body)
        session = session_key(headers.get("x-session-id"), parsed.fields)
        return parsed, session, self.locator.locate(headers, client_host).location

    async def admit(
        self, path: str, parsed: InferenceRequest, session: str | None, location: LatLon, key: ApiKey | None
    ) -> Admitted | JSONResponse:
        """Where `parsed` goes, or the answer that refuses it (unknown model, over its
        key's limits, no region able to serve it)."""
        if parsed.model not in self._known_models:  # before any quota is charged
            self._metrics.requests.labels("none", "unknown", "404").inc()
            return error_response(
                404,
                f"The model `{parsed.model}` does not exist. Available: {sorted(self._known_models)}",
                param="model",
                code="model_not_found",
            )
        prompt_tokens = await self.prompt_counter.count(parsed.model, parsed.fields)
        cap = completion_cap(path, parsed.fields, prompt_tokens, self._max_model_len[parsed.model])
        parsed = dataclasses.replace(parsed, completion_cap=cap)
        facts = request_facts(parsed, location, session, prompt_tokens)
        on_usage = None
        if key is not None:
            refusal, on_usage = self._charge(key, prompt_tokens + cap, parsed.model)
            if refusal is not None:
                return refusal
        # A stream is settled on its usage too: asked for it, which the client that did not
        # ask never sees.
        hide_usage = on_usage is not None and parsed.stream and not asks_for_usage(parsed.fields)
        if hide_usage:
            parsed = dataclasses.replace(parsed, body=body_asking_for_usage(parsed.fields))
        candidates, panic = self._table.servable(parsed.model)
        now = time.monotonic()
        decision = choose(
            [r.load(self.corrector.correction_for(r.name, now), parsed.model) for r in candidates],
            facts,
            self._memory,
            self._profiles,
            self._settings.scoring,
        )
        if decision is None:
            if key is not None:  # sent nowhere: its key gets back what it was charged
                self.limits.refund(key.name, prompt_tokens + cap, now)
            self._metrics.requests.labels("none", parsed.model, "503").inc()
            return error_response(
                503,
                f"no healthy region serves `{parsed.model}` right now",
                code="no_healthy_region",
                headers={"Retry-After": str(self._settings.retry_after_s)},
            )
        ranked = [self._table.regions[name] for name in decision.ranked]
        ranked += self._table.reserve(parsed.model, decision.ranked, facts.client)
        reason = "panic" if panic else decision.reason
        return Admitted(parsed, facts, decision, ranked, reason, on_usage, hide_usage)

    def learn(self, admitted: Admitted, region: Region, ttfb_s: float) -> None:
        """What `region`'s first byte of `admitted`'s answer teaches the scorer."""
        self._memory.remember(region.name, admitted.facts, admitted.decision)
        if admitted.request.stream:  # only a stream's first byte is its first token
            # A reserve region, tried once every ranked one failed, has no estimate to correct.
            predicted_ms = next((e.ttft_ms for e in admitted.decision.estimates if e.region == region.name), None)
            if predicted_ms is not None:
                self.corrector.observe(region.name, predicted_ms, ttfb_s * 1000, time.monotonic())

    def _charge(
        self, key: ApiKey, charged: int, model: str
    ) -> tuple[JSONResponse | None, Callable[[int], None] | None]:
        """Charge `key` for a request that may use `charged` tokens: the 429 refusing it,
        or how to settle its token bucket on the tokens it used."""
        now = time.monotonic()
        wait_s = self.limits.admit(key.name, charged, now)
        if wait_s > 0:
            self._metrics.requests.labels("none", model, "429").inc()
            self._metrics.rate_limited.labels(self.limits.limiting(key.name, charged, now)).inc()
            if math.isinf(wait_s):
                return error_response(
                    429,
                    f"this request may use up to {charged} tokens, more than key '{key.name}' may use in a "
                    "minute; set max_tokens lower",
                    code="rate_limit_exceeded",
                ), None
            retry = str(math.ceil(wait_s))
            return error_response(
                429,
                f"rate limit of key '{key.name}' reached; retry in {retry} s",
                code="rate_limit_exceeded",
                headers={"Retry-After": retry},
            ), None
        if not self.limits.limits_tokens(key.name):
            return None, None
        # Charged ahead at the most it may use; settled on its usage.
        return None, lambda used: self.limits.settle(key.name, charged, used, time.monotonic())


def request_facts(parsed: InferenceRequest, location: LatLon, session: str | None, prompt_tokens: int) -> RequestFacts:
    return RequestFacts(
        client=location,
        prompt_tokens=max(1, prompt_tokens),
        prefix_blocks=prefix_blocks(prompt_text(parsed.fields)),
        tokens_per_block=BLOCK_BYTES // CHARS_PER_TOKEN,
        session=session,
        cell=(round(location.lat), round(location.lon), parsed.model),
    )
