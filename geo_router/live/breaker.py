"""A circuit breaker per region, pure: the caller passes the time.

closed: traffic flows; `failure_threshold` failures in a row (requests or probes) open
it. open: no traffic for at least `open_s`; after that the next health probe decides
(half-open): success closes it, failure keeps it open for another `open_s`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CircuitBreaker:
    failure_threshold: int = 1
    open_s: float = 2.0
    failures: int = 0
    opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.is_open or self.failures >= self.failure_threshold:
            self.opened_at = now

    def record_probe_success(self, now: float) -> None:
        """A health probe answered well: closes the breaker once it has been open long enough."""
        if self.opened_at is None or now - self.opened_at >= self.open_s:
            self.failures = 0
            self.opened_at = None

    def record_request_success(self) -> None:
        if self.opened_at is None:
            self.failures = 0
