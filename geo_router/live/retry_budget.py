"""A global budget for failovers (as Envoy's retry budget and gRPC's retry throttling):
failovers stay a fraction of the traffic, so one request that fails everywhere, or a
fleet in trouble, does not multiply the load it puts on the regions."""

from __future__ import annotations


class RetryBudget:
    def __init__(self, ratio: float, burst: int):
        self.ratio = ratio
        self.burst = burst
        self.tokens = float(burst)

    def deposit(self) -> None:
        """A request arrived: it earns the fleet `ratio` of one failover."""
        self.tokens = min(float(self.burst), self.tokens + self.ratio)

    def withdraw(self) -> bool:
        """Spend one failover if the budget has it."""
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
