"""Per-region replica targets from demand and latency SLOs, and the global loop's floors.

Three rooms: `policy/` (pure: signals in, a target out), `live/` (the policy inside Ray
Serve's controller and what it publishes in Ray's KV) and `sim/` (trace replay of the
policy against its peers). The package may import `meridian_core` only (and Ray, in
`live/`); `policy/` imports neither `live/` nor `sim/`.
"""
