"""A circuit breaker per region, pure: the caller passes the time.

closed: traffic flows; `failure_threshold` failures in a row (requests or status polls)
open it. open: no traffic for the open time; after that it is half-open and what
opened it decides:
- opened by status polls: the next good poll closes it;
- opened by failed requests: only evidence that inference works closes it, an answered
  request or an inference probe (a region whose /status looks fine while its inference
  hangs must not get traffic back on a good poll).
A failure while half-open opens it again for twice as long (up to `max_open_s`), so a
region that keeps failing is tried less and less often.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CircuitBreaker:
    failure_threshold: int = 1
    open_s: float = 2.0
    max_open_s: float = 60.0
    failures: int = 0
    opened_at: float | None = None
    opened_by_requests: bool = False
    # Openings since it last closed: each doubles the open time.
    trips: int = 0

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    @property
    def open_for_s(self) -> float:
        return min(self.max_open_s, self.open_s * 2 ** max(0, self.trips - 1))

    def half_open(self, now: float) -> bool:
        """Open, with its open time over: the next evidence decides."""
        return self.opened_at is not None and now - self.opened_at >= self.open_for_s

    def record_failure(self, now: float, by_request: bool = False) -> None:
        self.failures += 1
        if self.opened_at is None:
            if self.failures >= self.failure_threshold:
                self.opened_at, self.trips, self.opened_by_requests = now, 1, by_request
        elif self.half_open(now):
            self.opened_at, self.trips = now, self.trips + 1
            self.opened_by_requests = self.opened_by_requests or by_request
        else:
            self.opened_by_requests = self.opened_by_requests or by_request

    def record_probe_success(self, now: float) -> None:
        """A status poll answered well: closes a breaker polls opened, once half-open."""
        if self.opened_at is None or (self.half_open(now) and not self.opened_by_requests):
            self._close()

    def record_inference_success(self, now: float) -> None:
        """A request or an inference probe was answered: closes the breaker once half-open
        (a request in flight when it opened proves nothing about the region now)."""
        if self.opened_at is None or self.half_open(now):
            self._close()

    def _close(self) -> None:
        self.failures, self.opened_at, self.opened_by_requests, self.trips = 0, None, False, 0
