"""API keys' rate limits, token buckets per key: requests and tokens per minute, taken
together or not at all. They are compiled (routing_core/src/limits.rs): one table that the
router's Python app and its compiled front both charge, so a key's limits hold across the
two. This module is their Python face; the caller passes the time."""

from __future__ import annotations

from routing_core import RateLimits

# The limits a key may have, as `RateLimits.limiting` names them.
LIMITS = ("requests", "tokens")

__all__ = ["LIMITS", "RateLimits"]
