"""Token buckets, pure: the caller passes the time, so the simulator can drive them too."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """Holds up to `capacity`; refills `capacity` per `period_s` continuously."""

    capacity: float
    period_s: float = 60.0
    level: float = field(default=math.nan)
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        if math.isnan(self.level):
            self.level = self.capacity

    @property
    def rate_per_s(self) -> float:
        return self.capacity / self.period_s

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated_at) * self.rate_per_s)
        self.updated_at = now

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until `amount` could be taken (0 if now); infinite if it never fits."""
        self._refill(now)
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate_per_s)

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount

    def give_back(self, amount: float, now: float) -> None:
        """Return what was taken and not used; a negative amount takes what was used beyond it."""
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)


# The limits a key may have, as `KeyLimits.limiting` names them.
LIMITS = ("requests", "tokens")


@dataclass
class KeyLimits:
    """A key's requests-per-minute and tokens-per-minute buckets, taken together or not at all."""

    requests: TokenBucket | None
    tokens: TokenBucket | None

    def _demands(self, tokens: float) -> list[tuple[str, TokenBucket, float]]:
        wanted = zip(LIMITS, (self.requests, self.tokens), (1.0, tokens), strict=True)
        return [(limit, bucket, amount) for limit, bucket, amount in wanted if bucket is not None]

    def admit(self, tokens: float, now: float) -> float:
        """Take one request and `tokens` if both fit; else take nothing and return the wait in s."""
        demands = self._demands(tokens)
        wait = max((bucket.wait_s(amount, now) for _, bucket, amount in demands), default=0.0)
        if wait == 0.0:
            for _, bucket, amount in demands:
                bucket.take(amount, now)
        return wait

    def settle(self, charged: float, used: float, now: float) -> None:
        """A request charged `charged` tokens ahead turned out to use `used` (its answer's usage)."""
        if self.tokens is not None:
            self.tokens.give_back(charged - used, now)

    def limiting(self, tokens: float, now: float) -> str:
        """The limit that keeps a request for `tokens` waiting longest now: the one that refused it."""
        waits = {limit: bucket.wait_s(amount, now) for limit, bucket, amount in self._demands(tokens)}
        return max(waits, key=waits.__getitem__)
